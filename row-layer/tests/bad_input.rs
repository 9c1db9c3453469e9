//! Bad input to the engine (issue 10, docs/BAD-INPUT.md): bad names, damaged
//! metadata and metadata written by a newer rbd-row. Every case checks that
//! the error is the right kind AND that nothing was lost: the store's objects
//! are byte-for-byte what they were, and once the damage is undone the image
//! opens with its data and snapshots intact.

mod common;

use bytes::Bytes;
use common::*;
use row_layer::backend::ext::BackendExt;
use row_layer::backend::local::LocalBackend;
use row_layer::backend::mem::MemBackend;
use row_layer::backend::{Backend, WriteOp};
use row_layer::header_format::{HeaderEntry, StoredHeader, ENTRY_PREFIX};
use row_layer::records::{EPOCH, HEADER};
use row_layer::{layout, Epoch, ErrorKind, ImageId, Store};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every object's payload, by name.
async fn dump(b: &dyn Backend) -> BTreeMap<String, Bytes> {
    let mut out = BTreeMap::new();
    for oid in b.list("").await.expect("list") {
        let st = b.stat(&oid).await.expect("stat");
        let data = b.read(&oid, 0, st.size).await.expect("read");
        out.insert(oid, data);
    }
    out
}

async fn put(b: &dyn Backend, oid: &str, bytes: Vec<u8>) {
    b.operate(oid, WriteOp::new().write_full(Bytes::from(bytes)))
        .await
        .expect("write_full");
}

async fn get(b: &dyn Backend, oid: &str) -> Vec<u8> {
    let st = b.stat(oid).await.expect("stat");
    b.read(oid, 0, st.size).await.expect("read").to_vec()
}

/// A closed image "img" with data, two snapshots (so two sealed epochs with
/// records) and its expected head contents.
async fn fixture() -> (Store, Arc<MemBackend>, ImageId, Vec<u8>) {
    let mem = Arc::new(MemBackend::new());
    let store = Store::new(mem.clone() as Arc<dyn Backend>);
    store
        .create("img", small_opts(4 * OBJ))
        .await
        .expect("create");
    let img = store.open("img").await.expect("open");
    img.write(0, pattern(1, OBJ as usize)).await.expect("write");
    img.snap_create("s1").await.expect("s1");
    img.write(OBJ, pattern(2, 2 * OBJ as usize))
        .await
        .expect("write");
    img.snap_create("s2").await.expect("s2");
    img.write(GRAIN, pattern(3, GRAIN as usize))
        .await
        .expect("write");
    let content = read_all(&img).await;
    img.close().await.expect("close");
    let id = store.image_id("img").await.expect("id");
    (store, mem, id, content)
}

/// Opens "img" and checks head content and snapshot names.
async fn intact(store: &Store, content: &[u8]) {
    let img = store.open("img").await.expect("reopen after repair");
    assert_eq!(read_all(&img).await, content, "head content");
    let names: Vec<String> = img.snap_list().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["s1", "s2"]);
    img.self_check().expect("self check");
    img.close().await.expect("close");
}

/// Sealed epochs that have a record object.
async fn sealed_epochs(b: &dyn Backend, id: &ImageId) -> Vec<String> {
    let prefix = layout::epoch_object(id, Epoch(0));
    let prefix = &prefix[..prefix.len() - 16];
    let mut v = b.list(prefix).await.expect("list");
    v.sort();
    v
}

/// Rewrites the version field of an enveloped record and fixes its crc,
/// as a newer rbd-row would have written it.
fn with_version(bytes: &[u8], version: u16) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[4..6].copy_from_slice(&version.to_le_bytes());
    let body = b.len() - 4;
    let crc = crc32c::crc32c(&b[..body]);
    b[body..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Replaces `oid` with `bad`, checks that opening fails with `kind` (and a
/// message containing `says`) without changing any object, restores it and
/// checks the image.
async fn refused_then_restored(
    store: &Store,
    mem: &MemBackend,
    oid: &str,
    bad: Option<Vec<u8>>,
    kind: ErrorKind,
    says: &str,
    content: &[u8],
) {
    let good = get(mem, oid).await;
    match &bad {
        Some(b) => put(mem, oid, b.clone()).await,
        None => mem.operate(oid, WriteOp::remove()).await.expect("remove"),
    }
    let before = dump(mem).await;
    for _ in 0..2 {
        let e = store
            .open("img")
            .await
            .err()
            .unwrap_or_else(|| panic!("{says}: opened"));
        assert_eq!(e.kind(), kind, "{says}: {e}");
        assert!(e.message().contains(says), "{says}: {e}");
        let e = store
            .open_snapshot("img", "s1")
            .await
            .err()
            .unwrap_or_else(|| panic!("{says}: snapshot opened"));
        assert_eq!(e.kind(), kind, "{says} (snapshot): {e}");
    }
    assert_eq!(
        dump(mem).await,
        before,
        "{says}: a failed open changed the store"
    );
    put(mem, oid, good).await;
    intact(store, content).await;
}

#[tokio::test]
async fn newer_version_header_is_unsupported_not_corrupt() {
    let (store, mem, id, content) = fixture().await;
    let oid = layout::header_object(&id);
    let good = get(&*mem, &oid).await;
    let newer = with_version(&good, HEADER.current_version + 1);
    let e = StoredHeader::decode(&newer).expect_err("newer header");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let want = format!(
        "unsupported version {} of RRHD record; this rbd-row reads up to {}",
        HEADER.current_version + 1,
        HEADER.current_version
    );
    assert!(e.message().contains(&want), "{e}");
    refused_then_restored(
        &store,
        &mem,
        &oid,
        Some(with_version(&good, u16::MAX)),
        ErrorKind::Unsupported,
        "unsupported version 65535",
        &content,
    )
    .await;
    // Version 0 was never written: that is damage.
    let e = StoredHeader::decode(&with_version(&good, 0)).expect_err("v0");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.message().contains("version"), "{e}");
}

#[tokio::test]
async fn newer_version_epoch_record_is_unsupported_not_corrupt() {
    let (store, mem, id, content) = fixture().await;
    let epochs = sealed_epochs(&*mem, &id).await;
    assert!(!epochs.is_empty());
    let oid = &epochs[0];
    let good = get(&*mem, oid).await;
    let newer = EPOCH.current_version + 1;
    refused_then_restored(
        &store,
        &mem,
        oid,
        Some(with_version(&good, newer)),
        ErrorKind::Unsupported,
        &format!("unsupported version {newer} of RREP record"),
        &content,
    )
    .await;
}

#[tokio::test]
async fn damaged_header_is_refused_and_nothing_changes() {
    let (store, mem, id, content) = fixture().await;
    let oid = layout::header_object(&id);
    let good = get(&*mem, &oid).await;
    // Bit flips: in the magic, the version, the length, the payload, the crc.
    for i in [0, 4, 7, 12, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        refused_then_restored(
            &store,
            &mem,
            &oid,
            Some(bad),
            ErrorKind::Corrupt,
            "RRHD record",
            &content,
        )
        .await;
    }
    // Truncated, empty.
    for cut in [0, 9, good.len() - 1] {
        refused_then_restored(
            &store,
            &mem,
            &oid,
            Some(good[..cut].to_vec()),
            ErrorKind::Corrupt,
            "RRHD record",
            &content,
        )
        .await;
    }
    // A well-formed header (valid crcs) naming an epoch it does not have.
    let entries = mem.omap_all(&oid, ENTRY_PREFIX).await.expect("entries");
    let (key, value) = entries
        .iter()
        .find(|(k, _)| k.starts_with("hdr.snap."))
        .expect("a snapshot entry");
    let HeaderEntry::Snap(mut s) = HeaderEntry::decode(key, value).expect("entry") else {
        panic!("not a snapshot entry");
    };
    s.epoch = Epoch(0x7777);
    let bad = HeaderEntry::Snap(s).encode().expect("encode");
    entry_refused_then_restored(&store, &mem, &oid, key, bad, "unknown epoch", &content).await;
    // ... or whose head is missing from its epoch table.
    let (key, value) = entries
        .iter()
        .find(|(k, _)| k.starts_with("hdr.epoch."))
        .expect("an epoch entry");
    let HeaderEntry::Epoch(_, meta) = HeaderEntry::decode(key, value).expect("entry") else {
        panic!("not an epoch entry");
    };
    let moved = HeaderEntry::Epoch(Epoch(0x7778), meta)
        .encode()
        .expect("encode");
    entry_refused_then_restored(&store, &mem, &oid, key, moved, "found under key", &content).await;
}

/// Replaces header entry `key` with `bad`, checks that opening fails as
/// corrupt (saying `says`) without changing any object, restores it and
/// checks the image.
async fn entry_refused_then_restored(
    store: &Store,
    mem: &MemBackend,
    oid: &str,
    key: &str,
    bad: Bytes,
    says: &str,
    content: &[u8],
) {
    let good = mem.omap_all(oid, key).await.expect("entry")[0].1.clone();
    mem.operate(oid, WriteOp::new().omap_set1(key, bad))
        .await
        .expect("damage");
    let before = dump(mem).await;
    let entries_before = mem.omap_all(oid, ENTRY_PREFIX).await.expect("entries");
    let e = store
        .open("img")
        .await
        .err()
        .expect("opened a damaged header");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{says}: {e}");
    assert!(e.message().contains(says), "{says}: {e}");
    assert_eq!(
        dump(mem).await,
        before,
        "{says}: a failed open changed the store"
    );
    assert_eq!(
        mem.omap_all(oid, ENTRY_PREFIX).await.expect("entries"),
        entries_before
    );
    mem.operate(oid, WriteOp::new().omap_set1(key, good))
        .await
        .expect("restore");
    intact(store, content).await;
}

#[tokio::test]
async fn damaged_or_missing_epoch_record_is_refused_and_nothing_changes() {
    let (store, mem, id, content) = fixture().await;
    let epochs = sealed_epochs(&*mem, &id).await;
    for oid in &epochs {
        let good = get(&*mem, oid).await;
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x01;
        refused_then_restored(
            &store,
            &mem,
            oid,
            Some(flipped),
            ErrorKind::Corrupt,
            "RREP record",
            &content,
        )
        .await;
        refused_then_restored(
            &store,
            &mem,
            oid,
            Some(good[..good.len() - 3].to_vec()),
            ErrorKind::Corrupt,
            "RREP record",
            &content,
        )
        .await;
        // Another epoch's (valid) record in this epoch's place.
        let other = epochs.iter().find(|o| *o != oid);
        if let Some(other) = other {
            let swapped = get(&*mem, other).await;
            refused_then_restored(
                &store,
                &mem,
                oid,
                Some(swapped),
                ErrorKind::Corrupt,
                "was expected",
                &content,
            )
            .await;
        }
        // Missing altogether.
        refused_then_restored(
            &store,
            &mem,
            oid,
            None,
            ErrorKind::Corrupt,
            "of a sealed epoch is missing",
            &content,
        )
        .await;
    }
}

const BAD_NAMES: &[&str] = &[
    "", "a/b", "../x", "/abs", "..", ".", ".hidden", "a@b", "a\0b", "\0",
];

#[tokio::test]
async fn bad_image_and_snapshot_names_are_refused() {
    let (store, mem, _id, content) = fixture().await;
    let long = "a".repeat(256);
    let long_unicode = "é".repeat(128); // 256 bytes
    let before = dump(&*mem).await;
    let mut names: Vec<&str> = BAD_NAMES.to_vec();
    names.push(&long);
    names.push(&long_unicode);
    for name in &names {
        let e = store
            .create(name, small_opts(OBJ))
            .await
            .expect_err("bad name created");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name:?}: {e}");
        let e = store.open(name).await.err().expect("bad name opened");
        assert!(
            matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::NotFound),
            "{name:?}: {e}"
        );
    }
    assert_eq!(
        dump(&*mem).await,
        before,
        "refused creates changed the store"
    );
    let img = store.open("img").await.expect("open");
    for name in &names {
        let e = img.snap_create(name).await.expect_err("bad snap name");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name:?}: {e}");
        let e = img.snap_rename("s1", name).await.expect_err("bad rename");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name:?}: {e}");
    }
    assert_eq!(read_all(&img).await, content);
    let snaps: Vec<String> = img.snap_list().into_iter().map(|s| s.name).collect();
    assert_eq!(snaps, ["s1", "s2"]);
    img.close().await.expect("close");
    // Names that are odd but valid, as in rbd.
    let max = "m".repeat(255);
    for name in ["-lead", "uni✓", "a b", "x..y", max.as_str()] {
        store.create(name, small_opts(OBJ)).await.expect(name);
        store
            .open(name)
            .await
            .expect(name)
            .close()
            .await
            .expect(name);
    }
    let names: Vec<String> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
}

/// On the local store image names are keys inside one redb file: none of
/// them, however path-like, reaches the file system.
#[tokio::test]
async fn path_like_names_never_touch_the_file_system() {
    let root = tempfile::tempdir().expect("tmp");
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    // The store is reached through a symlink: that is allowed and resolves
    // to the real directory.
    let real = root.path().join("real");
    std::fs::create_dir(&real).expect("mkdir");
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let backend = Arc::new(LocalBackend::open(&link).expect("open via symlink"));
    let store = Store::new(backend.clone() as Arc<dyn Backend>);
    let evil = format!("{}/x", outside.display());
    for name in ["../outside/x", "../../etc/passwd", evil.as_str(), "a/b"] {
        let e = store.create(name, small_opts(OBJ)).await.expect_err(name);
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name}: {e}");
    }
    store.create("ok", small_opts(OBJ)).await.expect("create");
    let img = store.open("ok").await.expect("open");
    img.write(0, pattern(9, GRAIN as usize))
        .await
        .expect("write");
    img.flush().await.expect("flush");
    img.close().await.expect("close");
    assert_eq!(
        std::fs::read_dir(&outside).expect("ls").count(),
        0,
        "nothing was written outside the store"
    );
    let mut top: Vec<String> = std::fs::read_dir(root.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["link", "outside", "real"]);
    assert!(real.join("store.redb").exists());
}

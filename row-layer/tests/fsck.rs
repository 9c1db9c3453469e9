//! fsck (`row_layer::fsck::check_store`): every kind of damage built by hand
//! through the Backend API is found (and nothing on a clean store with a
//! rich history), a plain check changes nothing, `repair` fixes what it can
//! without changing what images and snapshots read, and refuses an image
//! another client owns.

mod common;

use bytes::Bytes;
use common::*;
use row_layer::backend::local::LocalBackend;
use row_layer::backend::{mem::MemBackend, Action, Backend, WriteOp};
use row_layer::fsck::{check_store, CheckReport, FindingKind};
use row_layer::layout;
use row_layer::records::{EpochState, HeaderRecord};
use row_layer::{Epoch, ErrorKind, ImageId, ImageOptions, ObjectNo, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

const SIZE: u64 = 1 << 20;

fn mem_store() -> Store {
    let be: Arc<dyn Backend> = Arc::new(MemBackend::new());
    Store::new(be).with_image_options(ImageOptions {
        owner_timeout: Duration::from_millis(300),
        ..ImageOptions::default()
    })
}

/// Every object: version, payload, omap and owner xattr.
type Dump = BTreeMap<String, (u64, Vec<u8>, Vec<(String, Vec<u8>)>, Option<Vec<u8>>)>;

async fn dump(b: &dyn Backend) -> Dump {
    let mut out = BTreeMap::new();
    for oid in b.list("").await.expect("list") {
        let st = b.stat(&oid).await.expect("stat");
        let payload = b.read(&oid, 0, st.size).await.expect("read").to_vec();
        let mut omap = Vec::new();
        let mut after = String::new();
        loop {
            let page = b.omap_get(&oid, &after, "", 1024).await.expect("omap");
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            let n = page.len();
            omap.extend(page.into_iter().map(|(k, v)| (k, v.to_vec())));
            if n < 1024 {
                break;
            }
        }
        let x = b
            .get_xattr(&oid, "rbd_row.owner")
            .await
            .expect("xattr")
            .map(|v| v.to_vec());
        out.insert(oid, (st.version, payload, omap, x));
    }
    out
}

async fn read_header(b: &dyn Backend, id: &ImageId) -> HeaderRecord {
    row_layer::header_format::read_header(b, id)
        .await
        .expect("read header")
}

/// Commits `h` over the header stored now, as the image's owner would.
async fn write_header(b: &dyn Backend, h: &HeaderRecord) {
    let stored = read_header(b, &h.id).await;
    let mut h = h.clone();
    let mut op = WriteOp::new();
    op.actions = row_layer::header_format::commit_actions(&mut h, Some(&stored)).expect("encode");
    b.operate(&layout::header_object(&h.id), op)
        .await
        .expect("write header");
}

async fn put(b: &dyn Backend, oid: &str, data: &[u8]) {
    b.operate(
        oid,
        WriteOp::new()
            .write_full(Bytes::copy_from_slice(data))
            .omap_set1("000000", Bytes::from_static(b"D")),
    )
    .await
    .expect("put");
}

async fn flip_byte(b: &dyn Backend, oid: &str, at: usize) {
    let st = b.stat(oid).await.expect("stat");
    let mut bytes = b.read(oid, 0, st.size).await.expect("read").to_vec();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x5a;
    b.operate(oid, WriteOp::new().write_full(Bytes::from(bytes)))
        .await
        .expect("write");
}

/// (kind, object, key) of every warning/error, plus info findings apart.
fn problems(r: &CheckReport) -> BTreeSet<(FindingKind, String, Option<String>)> {
    r.findings
        .iter()
        .filter(|f| f.is_problem())
        .map(|f| (f.kind, f.object.clone(), f.key.clone()))
        .collect()
}

/// A store with snapshots, protection, clones (one flattened), a bookmark,
/// a rollback, a snapshot removal and a shrink; every handle closed.
async fn history(store: &Store) {
    store
        .create("base", small_opts(SIZE))
        .await
        .expect("create");
    let img = store.open("base").await.expect("open");
    img.write(0, pattern(1, 200 << 10)).await.expect("w1");
    img.snap_create("s1").await.expect("s1");
    img.write(100 << 10, pattern(2, 300 << 10))
        .await
        .expect("w2");
    img.snap_create("s2").await.expect("s2");
    img.snap_set_protected("s1", true).await.expect("protect");
    img.write(500 << 10, pattern(3, 64 << 10))
        .await
        .expect("w3");
    img.snap_create("s3").await.expect("s3");
    img.bookmark_create("s2", "bm").await.expect("bookmark");
    img.write(0, pattern(4, 8 << 10)).await.expect("w4");
    img.snap_rollback("s2").await.expect("rollback");
    img.write(64 << 10, pattern(5, 70 << 10)).await.expect("w5");
    img.snap_remove("s3").await.expect("snap rm");
    img.snap_create("s4").await.expect("s4");
    img.snap_remove("s2").await.expect("snap rm s2");
    img.discard(0, 64 << 10).await.expect("discard");
    img.flush().await.expect("flush");
    img.close().await.expect("close");

    store.clone_image("base", "s1", "c1").await.expect("clone");
    let c1 = store.open("c1").await.expect("open c1");
    c1.write(4096, pattern(6, 100 << 10))
        .await
        .expect("c1 write");
    c1.snap_create("cs").await.expect("cs");
    c1.write(300 << 10, pattern(7, 10 << 10))
        .await
        .expect("c1 write 2");
    c1.close().await.expect("close c1");

    store
        .clone_image("base", "s1", "c2")
        .await
        .expect("clone 2");
    let c2 = store.open("c2").await.expect("open c2");
    c2.write(700 << 10, pattern(8, 20 << 10))
        .await
        .expect("c2 write");
    c2.flatten().await.expect("flatten");
    c2.resize(600 << 10).await.expect("shrink");
    c2.close().await.expect("close c2");

    store
        .create("plain", small_opts(SIZE))
        .await
        .expect("create plain");
    let p = store.open("plain").await.expect("open plain");
    p.write(0, pattern(9, 128 << 10))
        .await
        .expect("plain write");
    p.snap_create("p1").await.expect("p1");
    p.write(64 << 10, pattern(10, 64 << 10))
        .await
        .expect("plain write 2");
    p.close().await.expect("close plain");
}

/// Contents of every head and snapshot of `names`.
async fn contents(store: &Store, names: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for n in names {
        let head = store.open_head_read_only(n).await.expect("open ro");
        out.insert(n.to_string(), read_all(&head).await);
        for s in head.snap_list() {
            let snap = store.open_snapshot(n, &s.name).await.expect("open snap");
            out.insert(format!("{n}@{}", s.name), read_all(&snap).await);
        }
    }
    out
}

#[tokio::test]
async fn clean_store_with_history_has_no_problem() {
    let store = mem_store();
    history(&store).await;
    let r = check_store(&store, None, false).await.expect("check");
    assert_eq!(problems(&r), BTreeSet::new(), "{:#?}", r.findings);
    assert!(r.is_clean());
    assert_eq!(r.images, 4);
    for n in ["base", "c1", "c2", "plain"] {
        let r = check_store(&store, Some(n), false)
            .await
            .expect("check one");
        assert!(r.is_clean(), "{n}: {:#?}", r.findings);
    }
    // Repair of a clean store changes nothing either.
    let before = dump(store.backend().as_ref()).await;
    let r = check_store(&store, None, true).await.expect("repair");
    assert!(r.is_clean());
    assert_eq!(before, dump(store.backend().as_ref()).await);
}

#[tokio::test]
async fn unknown_image_is_not_found() {
    let store = mem_store();
    let err = check_store(&store, Some("nope"), false)
        .await
        .expect_err("no such image");
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

struct Damage {
    expected: BTreeSet<(FindingKind, String, Option<String>)>,
    head_record: String,
}

/// Builds every repairable kind of damage on top of `history`.
async fn damage(store: &Store) -> Damage {
    let b = store.backend().clone();
    let b = b.as_ref();
    let mut expected = BTreeSet::new();
    let base = store.image_id("base").await.expect("id");
    let c1 = store.image_id("c1").await.expect("id");
    let plain = store.image_id("plain").await.expect("id");
    let bh = read_header(b, &base).await;

    // Orphan data object and orphan record of an epoch nobody names.
    let dead = Epoch(bh.next_epoch + 40);
    let old = (1..bh.next_epoch)
        .map(Epoch)
        .find(|e| !bh.epochs.contains_key(e) && !bh.garbage.contains(e))
        .expect("a retired epoch");
    for e in [dead, old] {
        let oid = layout::data_object(&base, ObjectNo(3), e);
        put(b, &oid, &[7u8; 4096]).await;
        expected.insert((FindingKind::OrphanData, oid, None));
    }
    let rec = layout::epoch_object(&base, old);
    put(b, &rec, b"RREP not really a record").await;
    expected.insert((FindingKind::OrphanRecord, rec, None));
    // A record for the open head (an interrupted seal): info only.
    let head_record = layout::epoch_object(&base, bh.head);
    put(b, &head_record, b"partial seal").await;
    // Stray touch key.
    let tk = layout::touch_key(old, ObjectNo(5));
    b.operate(
        &layout::header_object(&base),
        WriteOp::new().omap_set1(tk.clone(), Bytes::new()),
    )
    .await
    .expect("touch key");
    expected.insert((
        FindingKind::StrayTouchKey,
        layout::header_object(&base),
        Some(tk),
    ));
    // Unregistered clone: drop c1's children key; stale child: a key for a
    // child that does not exist.
    let reg = layout::children_object(&base);
    let s1 = bh.snap("s1").expect("s1").id;
    let c1_key = format!("{:016x}.{c1}", s1.0);
    b.operate(
        &reg,
        WriteOp::new().action(Action::OmapRemove(vec![c1_key.clone()])),
    )
    .await
    .expect("drop children key");
    expected.insert((FindingKind::UnregisteredClone, reg.clone(), Some(c1_key)));
    let stale = format!("{:016x}.{}", s1.0, "00000000deadbeef");
    b.operate(
        &reg,
        WriteOp::new().omap_set1(stale.clone(), Bytes::from_static(b"gone")),
    )
    .await
    .expect("stale key");
    expected.insert((FindingKind::StaleChild, reg.clone(), Some(stale)));

    // A garbage epoch with a corrupt record: "g" has s1 (epoch a) and s2
    // (epoch b); s2 is dropped by hand, epoch b becomes garbage and its
    // record is corrupted, so only listing finds its data objects.
    store.create("g", small_opts(SIZE)).await.expect("create g");
    let g = store.open("g").await.expect("open g");
    g.write(0, pattern(20, 256 << 10)).await.expect("g w1");
    g.snap_create("s1").await.expect("g s1");
    g.write(64 << 10, pattern(21, 200 << 10))
        .await
        .expect("g w2");
    g.snap_create("s2").await.expect("g s2");
    g.close().await.expect("close g");
    let gid = store.image_id("g").await.expect("g id");
    let mut gh = read_header(b, &gid).await;
    let e1 = gh.snap("s1").expect("s1").epoch;
    let e2 = gh.snap("s2").expect("s2").epoch;
    gh.snapshots.retain(|s| s.name != "s2");
    gh.epochs.remove(&e2);
    gh.epochs.get_mut(&gh.head).expect("head").parent = Some(e1);
    assert_eq!(gh.epochs[&e1].state, EpochState::Sealed);
    gh.garbage.push(e2);
    write_header(b, &gh).await;
    let grec = layout::epoch_object(&gid, e2);
    flip_byte(b, &grec, 12).await;
    expected.insert((FindingKind::CorruptGarbageRecord, grec, None));
    let gdata: Vec<String> = b
        .list(&layout::data_prefix(&gid))
        .await
        .expect("list")
        .into_iter()
        .filter(|o| o.ends_with(&format!(".{:016x}", e2.0)))
        .collect();
    assert!(gdata.len() >= 3, "{gdata:?}");
    for o in gdata {
        expected.insert((FindingKind::LeakedGarbageData, o, None));
    }

    // A directory entry without id object or header (an interrupted remove).
    b.operate(
        layout::DIRECTORY,
        WriteOp::new().omap_set1("name.ghost", Bytes::from_static(b"00000000000000ff")),
    )
    .await
    .expect("ghost entry");
    expected.insert((
        FindingKind::HalfRemoved,
        layout::header_object(&ImageId("00000000000000ff".into())),
        None,
    ));
    // An image without directory entry (an interrupted create).
    store.create("h", small_opts(SIZE)).await.expect("create h");
    b.operate(
        layout::DIRECTORY,
        WriteOp::new().action(Action::OmapRemove(vec!["name.h".into()])),
    )
    .await
    .expect("drop entry");
    expected.insert((
        FindingKind::UnlistedImage,
        layout::DIRECTORY.into(),
        Some("name.h".into()),
    ));
    // An image whose id object is gone.
    store.create("m", small_opts(SIZE)).await.expect("create m");
    b.operate(&layout::id_object("m"), WriteOp::remove())
        .await
        .expect("drop id");
    expected.insert((FindingKind::MissingIdObject, layout::id_object("m"), None));
    // An interrupted remove that marked the header.
    store.create("r", small_opts(SIZE)).await.expect("create r");
    let r = store.open("r").await.expect("open r");
    r.write(0, pattern(30, 4096)).await.expect("r write");
    r.close().await.expect("close r");
    let rid = store.image_id("r").await.expect("r id");
    let mut rh = read_header(b, &rid).await;
    rh.removing = true;
    write_header(b, &rh).await;
    expected.insert((FindingKind::HalfRemoved, layout::header_object(&rid), None));
    // Data and a record of an image that has neither header nor name.
    let lost = ImageId("0123456789abcdef".into());
    for oid in [
        layout::data_object(&lost, ObjectNo(0), Epoch(1)),
        layout::epoch_object(&lost, Epoch(1)),
    ] {
        put(b, &oid, b"x").await;
        expected.insert((FindingKind::HeaderlessObject, oid, None));
    }
    let _ = plain;
    Damage {
        expected,
        head_record,
    }
}

#[tokio::test]
async fn every_damage_is_found_check_changes_nothing_and_repair_fixes_it() {
    let store = mem_store();
    history(&store).await;
    let names = ["base", "c1", "c2", "plain"];
    let before_damage = contents(&store, &names).await;
    let dmg = damage(&store).await;
    let g_before = contents(&store, &["g"]).await;

    let b = store.backend().clone();
    let snapshot = dump(b.as_ref()).await;
    let r = check_store(&store, None, false).await.expect("check");
    assert_eq!(problems(&r), dmg.expected, "{:#?}", r.findings);
    assert!(!r.is_clean());
    assert!(r.findings.iter().all(|f| !f.repaired));
    let info = r.of_kind(FindingKind::HeadRecord);
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].object, dmg.head_record);
    assert!(!info[0].is_problem());
    assert_eq!(
        snapshot,
        dump(b.as_ref()).await,
        "a check without repair changed the store"
    );
    // Per image: the base image's own damage and its registrations.
    let one = check_store(&store, Some("base"), false)
        .await
        .expect("check base");
    let base_expected: BTreeSet<_> = dmg
        .expected
        .iter()
        .filter(|(_, o, k)| {
            let base = r
                .findings
                .iter()
                .find(|f| &f.object == o && &f.key == k)
                .and_then(|f| f.image.clone());
            base.as_deref() == Some("base")
        })
        .cloned()
        .collect();
    assert_eq!(problems(&one), base_expected);
    assert_eq!(snapshot, dump(b.as_ref()).await);

    let repaired = check_store(&store, None, true).await.expect("repair");
    assert!(
        repaired.errors.is_empty(),
        "{:?}",
        repaired
            .errors
            .iter()
            .map(|e| e.error.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        problems(&repaired),
        BTreeSet::new(),
        "{:#?}",
        repaired.findings
    );
    assert_eq!(repaired.repaired(), dmg.expected.len());

    let again = check_store(&store, None, false)
        .await
        .expect("second check");
    assert!(again.is_clean(), "{:#?}", again.findings);
    // The repairs themselves: names restored or removed, clone registered.
    let base = store.image_id("base").await.expect("id");
    assert!(store
        .children("base", Some("s1"))
        .await
        .expect("children")
        .iter()
        .any(|(_, n)| n == "c1"));
    assert_eq!(store.children("base", None).await.expect("kids").len(), 1);
    let listed: Vec<String> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(listed.contains(&"h".to_string()) && listed.contains(&"m".to_string()));
    assert!(!listed.contains(&"ghost".to_string()) && !listed.contains(&"r".to_string()));
    assert!(store.open_head_read_only("m").await.is_ok());
    assert!(b
        .list("rbd_row_data.0123456789abcdef")
        .await
        .unwrap()
        .is_empty());
    // The head record is legal and stays.
    assert!(b.stat(&dmg.head_record).await.is_ok());
    let _ = base;
    // Contents read the same.
    assert_eq!(before_damage, contents(&store, &names).await);
    assert_eq!(g_before, contents(&store, &["g"]).await);
    // And the images still work.
    let img = store.open("base").await.expect("open base");
    img.snap_create("after").await.expect("snap after repair");
    img.close().await.expect("close");
    assert!(check_store(&store, None, false)
        .await
        .expect("check")
        .is_clean());
}

#[tokio::test]
async fn unreadable_headers_are_reported_and_never_touched() {
    let store = mem_store();
    history(&store).await;
    let b = store.backend().clone();
    let b = b.as_ref();
    // "v": a header of a newer format version (valid envelope).
    let newer = row_layer::records::HEADER.current_version + 1;
    store.create("v", small_opts(SIZE)).await.expect("create v");
    let v = store.open("v").await.expect("open v");
    v.write(0, pattern(40, 8192)).await.expect("v write");
    v.close().await.expect("close v");
    let vid = store.image_id("v").await.expect("id");
    let hoid = layout::header_object(&vid);
    let st = b.stat(&hoid).await.expect("stat");
    let mut bytes = b.read(&hoid, 0, st.size).await.expect("read").to_vec();
    bytes[4..6].copy_from_slice(&newer.to_le_bytes());
    let n = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
    b.operate(&hoid, WriteOp::new().write_full(Bytes::from(bytes)))
        .await
        .expect("write v2");
    // Orphan-looking objects of "v" must not be touched either.
    let vjunk = layout::data_object(&vid, ObjectNo(9), Epoch(77));
    put(b, &vjunk, b"?").await;
    // "x": a corrupt header.
    store.create("x", small_opts(SIZE)).await.expect("create x");
    let xid = store.image_id("x").await.expect("id");
    flip_byte(b, &layout::header_object(&xid), 20).await;
    // An orphan next to them, in a healthy image, is still repaired.
    let base = store.image_id("base").await.expect("id");
    let orphan = layout::data_object(&base, ObjectNo(1), Epoch(1000));
    put(b, &orphan, b"leak").await;

    let r = check_store(&store, None, false).await.expect("check");
    let expected: BTreeSet<_> = [
        (FindingKind::UnsupportedVersion, hoid.clone(), None),
        (
            FindingKind::CorruptHeader,
            layout::header_object(&xid),
            None,
        ),
        (FindingKind::OrphanData, orphan.clone(), None),
    ]
    .into_iter()
    .collect();
    assert_eq!(problems(&r), expected, "{:#?}", r.findings);
    let f = &r.of_kind(FindingKind::UnsupportedVersion)[0];
    assert!(
        f.detail.contains(&format!("version {newer}")),
        "{}",
        f.detail
    );
    assert_eq!(f.image.as_deref(), Some("v"));

    let untouched = |d: &Dump| {
        d.iter()
            .filter(|(k, _)| k.contains(&vid.0) || k.contains(&xid.0) || k.contains("id.v"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let before = untouched(&dump(b).await);
    let r = check_store(&store, None, true).await.expect("repair");
    assert_eq!(before, untouched(&dump(b).await));
    assert!(b.stat(&vjunk).await.is_ok());
    assert!(b.stat(&orphan).await.is_err());
    let left: BTreeSet<_> = problems(&r).into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(
        left,
        [FindingKind::CorruptHeader, FindingKind::UnsupportedVersion]
            .into_iter()
            .collect()
    );
    assert!(!r.is_clean());
}

#[tokio::test]
async fn repair_refuses_an_image_in_use_and_changes_nothing_there() {
    let store = mem_store();
    history(&store).await;
    let b = store.backend().clone();
    let base = store.image_id("base").await.expect("id");
    let orphan = layout::data_object(&base, ObjectNo(2), Epoch(999));
    put(b.as_ref(), &orphan, b"leak").await;
    let plain = store.image_id("plain").await.expect("id");
    let orphan2 = layout::data_object(&plain, ObjectNo(2), Epoch(999));
    put(b.as_ref(), &orphan2, b"leak").await;

    let owner = store.open("base").await.expect("owner");
    let other = Store::new(b.clone()).with_image_options(ImageOptions {
        owner_timeout: Duration::from_millis(300),
        ..ImageOptions::default()
    });
    let r = check_store(&other, None, true).await.expect("repair");
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].image, "base");
    assert_eq!(r.errors[0].error.kind(), ErrorKind::Busy);
    assert!(
        r.errors[0].error.message().contains("in use"),
        "{}",
        r.errors[0].error
    );
    assert!(b.stat(&orphan).await.is_ok(), "deleted under a live owner");
    // The idle image was repaired.
    assert!(b.stat(&orphan2).await.is_err());
    assert!(!r.is_clean());
    owner.close().await.expect("close");
    let r = check_store(&other, Some("base"), true)
        .await
        .expect("repair after close");
    assert!(r.is_clean(), "{:#?}", r.findings);
    assert!(b.stat(&orphan).await.is_err());
}

#[tokio::test]
async fn local_store_orphans_and_unregistered_clone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path()).expect("local"));
    let store = Store::new(be.clone());
    history(&store).await;
    assert!(check_store(&store, None, false)
        .await
        .expect("check")
        .is_clean());
    let base = store.image_id("base").await.expect("id");
    let c1 = store.image_id("c1").await.expect("id");
    let s1 = read_header(be.as_ref(), &base)
        .await
        .snap("s1")
        .expect("s1")
        .id;
    let key = format!("{:016x}.{c1}", s1.0);
    be.operate(
        &layout::children_object(&base),
        WriteOp::new().action(Action::OmapRemove(vec![key.clone()])),
    )
    .await
    .expect("drop key");
    let orphan = layout::data_object(&c1, ObjectNo(0), Epoch(500));
    put(be.as_ref(), &orphan, b"leak").await;
    let before = contents(&store, &["base", "c1"]).await;
    let r = check_store(&store, Some("c1"), false).await.expect("check");
    let kinds: BTreeSet<_> = problems(&r).into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(
        kinds,
        [FindingKind::OrphanData, FindingKind::UnregisteredClone]
            .into_iter()
            .collect()
    );
    let uc = &r.of_kind(FindingKind::UnregisteredClone)[0];
    assert_eq!(uc.image.as_deref(), Some("base"));
    assert_eq!(uc.key.as_deref(), Some(key.as_str()));
    let r = check_store(&store, Some("c1"), true).await.expect("repair");
    assert_eq!(r.problems(), 0, "{:#?}", r.findings);
    assert!(check_store(&store, None, false)
        .await
        .expect("check")
        .is_clean());
    assert_eq!(before, contents(&store, &["base", "c1"]).await);
    // The registration protects the parent snapshot again.
    let img = store.open("base").await.expect("open");
    assert!(img.snap_set_protected("s1", false).await.is_err());
    img.close().await.expect("close");
}

//! On-disk format stability: records written by earlier builds (committed
//! fixtures: header formats 1 and 2, epoch format 1) must keep decoding to
//! the same values, and damaged records must be refused, never misread.
//!
//! Regenerate only when adding a new format version (this writes the
//! current version's fixtures; older ones stay as committed):
//! `ROW_WRITE_FIXTURES=1 cargo test -p row-layer --test formats`.

use bytes::Bytes;
use roaring::RoaringTreemap;
use row_layer::backend::Action;
use row_layer::header_format::{self, HeaderEntry, StoredHeader};
use row_layer::records::{
    BookmarkRecord, EpochDelta, EpochMeta, EpochState, HeaderRecord, ParentLink, SnapRecord,
    Timestamp,
};
use row_layer::{Epoch, ErrorKind, ImageId, SnapId};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn sample_header() -> HeaderRecord {
    let mut epochs = BTreeMap::new();
    epochs.insert(
        Epoch(1),
        EpochMeta {
            parent: None,
            state: EpochState::Sealed,
        },
    );
    epochs.insert(
        Epoch(3),
        EpochMeta {
            parent: Some(Epoch(1)),
            state: EpochState::Sealed,
        },
    );
    epochs.insert(
        Epoch(4),
        EpochMeta {
            parent: Some(Epoch(3)),
            state: EpochState::Open,
        },
    );
    HeaderRecord {
        id: ImageId("00c0ffee12345678".into()),
        name: "vm-disk-1".into(),
        size: 10 << 30,
        object_size: 4 << 20,
        grain_size: 4096,
        created: Timestamp {
            secs: 1_790_000_000,
            nanos: 123,
        },
        head: Epoch(4),
        next_epoch: 5,
        next_snap: 3,
        epochs,
        garbage: vec![Epoch(2)],
        head_truncated: Some((100, 200)),
        snapshots: vec![SnapRecord {
            id: SnapId(2),
            name: "nightly".into(),
            epoch: Epoch(3),
            size: 10 << 30,
            created: Timestamp {
                secs: 1_790_000_100,
                nanos: 0,
            },
            protected: true,
            parent_overlap: Some(1 << 30),
        }],
        bookmarks: vec![BookmarkRecord {
            name: "backup-17".into(),
            epoch: Epoch(1),
            size: 8 << 30,
            created: Timestamp {
                secs: 1_790_000_050,
                nanos: 7,
            },
        }],
        parent: Some(ParentLink {
            image: ImageId("0badcafe00000001".into()),
            snap: SnapId(9),
            epoch: Epoch(12),
            overlap: 1 << 30,
        }),
        removing: false,
        commit_seq: 0,
    }
}

fn sample_delta() -> EpochDelta {
    let mut d = EpochDelta::default();
    d.touched.insert_range(0..3);
    d.touched.insert(1 << 20);
    d.data.insert_range(0..1500);
    d.data.insert(1u64 << 30);
    d.zero.insert_range(2000..2048);
    d.reclaimed.insert(7);
    d
}

/// The payload and the entries of a commit.
fn split(actions: Vec<Action>) -> (Bytes, Vec<(String, Bytes)>, Vec<String>) {
    let (mut payload, mut set, mut gone) = (Bytes::new(), Vec::new(), Vec::new());
    for a in actions {
        match a {
            Action::WriteFull(b) => payload = b,
            Action::OmapSet(kv) => set.extend(kv),
            Action::OmapRemove(k) => gone.extend(k),
            other => panic!("unexpected action in a header commit: {other:?}"),
        }
    }
    set.sort_by(|a, b| a.0.cmp(&b.0));
    (payload, set, gone)
}

/// Entries as a fixture file: per entry, u32 LE key length, key, u32 LE
/// value length, value.
fn entries_file(entries: &[(String, Bytes)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in entries {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

fn parse_entries_file(mut b: &[u8]) -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    let take = |b: &mut &[u8]| {
        let n = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
        let v = b[4..4 + n].to_vec();
        *b = &b[4 + n..];
        v
    };
    while !b.is_empty() {
        let k = String::from_utf8(take(&mut b)).expect("utf-8 key");
        let v = Bytes::from(take(&mut b));
        out.push((k, v));
    }
    out
}

fn assemble(payload: &[u8], entries: &[(String, Bytes)]) -> row_layer::Result<HeaderRecord> {
    match StoredHeader::decode(payload)? {
        StoredHeader::Split(core) => core.assemble(entries),
        StoredHeader::Whole(_) => panic!("expected a format-2 header"),
    }
}

#[test]
fn committed_v1_fixtures_still_decode() {
    let header = sample_header();
    let delta = sample_delta();
    let bytes = std::fs::read(fixture("header_v1.bin")).expect("header fixture");
    match StoredHeader::decode(&bytes).expect("decode header v1") {
        StoredHeader::Whole(h) => assert_eq!(h, header),
        StoredHeader::Split(_) => panic!("format 1 decoded as format 2"),
    }
    let bytes = std::fs::read(fixture("epoch_v1.bin")).expect("epoch fixture");
    let back = EpochDelta::decode(&bytes, &header.id, Epoch(3)).expect("decode epoch v1");
    assert_eq!(back, delta);
    let wrong = EpochDelta::decode(&bytes, &header.id, Epoch(4)).expect_err("other epoch");
    assert_eq!(wrong.kind(), ErrorKind::Corrupt);
}

/// Epoch format 2 adds the moved grains (defrag.rs); a delta without any
/// is still written as format 1, byte for byte the committed fixture.
#[test]
fn committed_v2_epoch_fixture_still_decodes() {
    let header = sample_header();
    let v1 = std::fs::read(fixture("epoch_v1.bin")).expect("epoch fixture");
    let again = sample_delta().encode(&header.id, Epoch(3), Some(Epoch(1)));
    assert_eq!(again.expect("encode"), v1, "no moved grain: still format 1");
    let mut delta = sample_delta();
    delta.moved.insert_range(10..20);
    delta.moved.insert(1u64 << 30);
    if std::env::var_os("ROW_WRITE_FIXTURES").is_some() {
        let bytes = delta.encode(&header.id, Epoch(3), Some(Epoch(1)));
        std::fs::write(fixture("epoch_v2.bin"), bytes.expect("encode")).expect("write");
    }
    let bytes = std::fs::read(fixture("epoch_v2.bin")).expect("epoch v2 fixture");
    assert_eq!(&bytes[..6], b"RREP\x02\x00");
    let back = EpochDelta::decode(&bytes, &header.id, Epoch(3)).expect("decode epoch v2");
    assert_eq!(back, delta);
    delta.moved.insert(1900);
    let bad = delta
        .encode(&header.id, Epoch(3), Some(Epoch(1)))
        .expect("encode");
    let e = EpochDelta::decode(&bad, &header.id, Epoch(3)).expect_err("moved outside data");
    assert_eq!(e.kind(), ErrorKind::Corrupt);
}

#[test]
fn committed_v2_header_fixture_still_decodes() {
    let mut header = sample_header();
    let (payload, entries, _) = split(header_format::commit_actions(&mut header, None).unwrap());
    assert_eq!(header.commit_seq, 1);
    if std::env::var_os("ROW_WRITE_FIXTURES").is_some() {
        std::fs::write(fixture("header_v2.bin"), &payload).expect("write");
        std::fs::write(fixture("header_v2_entries.bin"), entries_file(&entries)).expect("write");
    }
    let payload = std::fs::read(fixture("header_v2.bin")).expect("header v2 fixture");
    let entries = parse_entries_file(&std::fs::read(fixture("header_v2_entries.bin")).unwrap());
    assert_eq!(entries.len(), 5, "3 epochs, 1 snapshot, 1 bookmark");
    assert_eq!(
        assemble(&payload, &entries).expect("decode header v2"),
        header
    );
}

/// A snapshot operation writes the payload plus only the entries it
/// changes, whatever the number of snapshots (the O(1) header commit).
#[test]
fn header_commits_write_only_changed_entries() {
    let mut stored = sample_header();
    for i in 0..1000u64 {
        stored.snapshots.push(SnapRecord {
            id: SnapId(100 + i),
            name: format!("s{i}"),
            epoch: Epoch(3),
            size: 1 << 30,
            created: Timestamp { secs: i, nanos: 0 },
            protected: false,
            parent_overlap: None,
        });
    }
    let (_, all, gone) = split(header_format::commit_actions(&mut stored, None).unwrap());
    assert_eq!((all.len(), gone.len()), (3 + 1001 + 1, 0));
    // Rename one snapshot: the payload and one entry.
    let mut renamed = stored.clone();
    renamed.snapshots[500].name = "renamed".into();
    let (payload, set, gone) =
        split(header_format::commit_actions(&mut renamed, Some(&stored)).unwrap());
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].0, format!("hdr.snap.{:016x}", 100 + 499));
    assert!(gone.is_empty());
    assert_eq!(renamed.commit_seq, stored.commit_seq + 1);
    assert!(payload.len() < 256, "payload is {} bytes", payload.len());
    // Remove one snapshot and add an epoch: one removal, one set.
    let mut next = renamed.clone();
    next.snapshots.remove(0);
    next.epochs.insert(
        Epoch(9),
        EpochMeta {
            parent: Some(Epoch(4)),
            state: EpochState::Sealed,
        },
    );
    let (_, set, gone) = split(header_format::commit_actions(&mut next, Some(&renamed)).unwrap());
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].0, format!("hdr.epoch.{:016x}", 9));
    assert_eq!(gone, vec![format!("hdr.snap.{:016x}", 2)]);
    // Nothing changed but a fixed field: the payload alone.
    let mut resized = next.clone();
    resized.size += 4096;
    let (_, set, gone) = split(header_format::commit_actions(&mut resized, Some(&next)).unwrap());
    assert!(set.is_empty() && gone.is_empty());
    // The first commit over a format-1 header writes every entry.
    let v1 = sample_header();
    let mut upgraded = v1.clone();
    upgraded.size += 4096;
    let (_, set, _) = split(header_format::commit_actions(&mut upgraded, Some(&v1)).unwrap());
    assert_eq!(set.len(), 5);
    assert_eq!(upgraded.commit_seq, 1);
}

#[test]
fn damaged_split_headers_are_refused() {
    let mut header = sample_header();
    let (payload, entries, _) = split(header_format::commit_actions(&mut header, None).unwrap());
    for i in 0..payload.len() {
        let mut bad = payload.to_vec();
        bad[i] ^= 0x10;
        assert_eq!(
            assemble(&bad, &entries)
                .expect_err("flipped payload")
                .kind(),
            ErrorKind::Corrupt
        );
    }
    for (n, (_, v)) in entries.iter().enumerate() {
        for i in 0..v.len() {
            let mut bad = entries.clone();
            let mut b = v.to_vec();
            b[i] ^= 0x04;
            bad[n].1 = Bytes::from(b);
            assert_eq!(
                assemble(&payload, &bad).expect_err("flipped entry").kind(),
                ErrorKind::Corrupt
            );
        }
    }
    // A lost entry, an extra one and one under another key are refused.
    let e = assemble(&payload, &entries[1..]).expect_err("lost entry");
    assert!(e.message().contains("omap holds"), "{e}");
    let mut extra = entries.clone();
    let stray = HeaderEntry::Epoch(
        Epoch(2),
        EpochMeta {
            parent: Some(Epoch(1)),
            state: EpochState::Sealed,
        },
    );
    extra.push((stray.key(), stray.encode().unwrap()));
    assert_eq!(
        assemble(&payload, &extra).expect_err("extra").kind(),
        ErrorKind::Corrupt
    );
    let mut moved = entries.clone();
    moved[0].0 = format!("hdr.epoch.{:016x}", 77);
    assert_eq!(
        assemble(&payload, &moved).expect_err("moved").kind(),
        ErrorKind::Corrupt
    );
}

#[test]
fn damaged_records_are_refused() {
    let bytes = std::fs::read(fixture("header_v1.bin")).expect("header fixture");
    for cut in [0, 5, 10, bytes.len() / 2, bytes.len() - 1] {
        let e = StoredHeader::decode(&bytes[..cut]).expect_err("truncated");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }
    for i in (0..bytes.len()).step_by(7) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            StoredHeader::decode(&bad).expect_err("flipped").kind(),
            ErrorKind::Corrupt
        );
    }
    // A header whose head epoch is sealed is refused even with a valid crc.
    let mut h = sample_header();
    h.head = Epoch(3);
    let e = header_format::round_trip(&h).expect_err("bad head");
    assert!(e.message().contains("head epoch"), "{e}");
    // A delta where a grain is both data and zero is refused.
    let mut d = sample_delta();
    d.zero.insert(5);
    let bytes = d
        .encode(&ImageId("x".into()), Epoch(1), None)
        .expect("encode");
    assert!(EpochDelta::decode(&bytes, &ImageId("x".into()), Epoch(1)).is_err());
    let _ = RoaringTreemap::new();
}

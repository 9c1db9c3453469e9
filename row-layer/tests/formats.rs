//! On-disk format stability: records written by earlier builds (committed
//! fixtures, format version 1) must keep decoding to the same values, and
//! damaged records must be refused, never misread.
//!
//! Regenerate only when adding a new format version:
//! `ROW_WRITE_FIXTURES=1 cargo test -p row-layer --test formats`.

use roaring::RoaringTreemap;
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

#[test]
fn committed_v1_fixtures_still_decode() {
    let header = sample_header();
    let delta = sample_delta();
    if std::env::var_os("ROW_WRITE_FIXTURES").is_some() {
        std::fs::write(fixture("header_v1.bin"), header.encode().expect("encode")).expect("write");
        let bytes = delta
            .encode(&header.id, Epoch(3), Some(Epoch(1)))
            .expect("encode");
        std::fs::write(fixture("epoch_v1.bin"), bytes).expect("write");
    }
    let bytes = std::fs::read(fixture("header_v1.bin")).expect("header fixture");
    assert_eq!(
        HeaderRecord::decode(&bytes).expect("decode header v1"),
        header
    );
    let bytes = std::fs::read(fixture("epoch_v1.bin")).expect("epoch fixture");
    let back = EpochDelta::decode(&bytes, &header.id, Epoch(3)).expect("decode epoch v1");
    assert_eq!(back, delta);
    let wrong = EpochDelta::decode(&bytes, &header.id, Epoch(4)).expect_err("other epoch");
    assert_eq!(wrong.kind(), ErrorKind::Corrupt);
}

#[test]
fn damaged_records_are_refused() {
    let bytes = std::fs::read(fixture("header_v1.bin")).expect("header fixture");
    for cut in [0, 5, 10, bytes.len() / 2, bytes.len() - 1] {
        let e = HeaderRecord::decode(&bytes[..cut]).expect_err("truncated");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }
    for i in (0..bytes.len()).step_by(7) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            HeaderRecord::decode(&bad).expect_err("flipped").kind(),
            ErrorKind::Corrupt
        );
    }
    // A header whose head epoch is sealed is refused even with a valid crc.
    let mut h = sample_header();
    h.head = Epoch(3);
    let e = HeaderRecord::decode(&h.encode().expect("encode")).expect_err("bad head");
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

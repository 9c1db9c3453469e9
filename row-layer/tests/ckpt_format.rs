//! On-disk stability of the head checkpoint record (`RRCK`, ckpt_record.rs):
//! the committed version-1 fixture must keep decoding to the same value,
//! and damaged or misplaced records must be refused, never misread.
//!
//! Regenerate only when adding a new format version:
//! `ROW_WRITE_FIXTURES=1 cargo test -p row-layer --test ckpt_format`.

use row_layer::ckpt_record::HeadCheckpoint;
use row_layer::records::EpochDelta;
use row_layer::{Epoch, ErrorKind, ImageId};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ckpt_v1.bin")
}

fn image() -> ImageId {
    ImageId("00c0ffee12345678".into())
}

fn sample() -> HeadCheckpoint {
    let mut delta = EpochDelta::default();
    delta.touched.insert_range(0..3);
    delta.touched.insert(1 << 20);
    delta.data.insert_range(0..1500);
    delta.data.insert(1u64 << 30);
    delta.zero.insert_range(2000..2048);
    HeadCheckpoint {
        generation: 7,
        delta,
    }
}

#[test]
fn committed_v1_fixture_still_decodes() {
    let c = sample();
    if std::env::var_os("ROW_WRITE_FIXTURES").is_some() {
        std::fs::write(fixture(), c.encode(&image(), Epoch(4)).expect("encode")).expect("write");
    }
    let bytes = std::fs::read(fixture()).expect("checkpoint fixture");
    assert_eq!(&bytes[..4], b"RRCK");
    let back = HeadCheckpoint::decode(&bytes, &image(), Epoch(4)).expect("decode v1");
    assert_eq!(back, c);
    // Re-encoding is canonical: the same bytes.
    assert_eq!(back.encode(&image(), Epoch(4)).expect("encode"), bytes);
}

/// Version 2 adds the moved grains (defrag.rs); a checkpoint without any
/// is still written as version 1 (the fixture above, byte for byte).
#[test]
fn committed_v2_fixture_still_decodes() {
    let mut c = sample();
    c.delta.moved.insert_range(100..200);
    let path = fixture().with_file_name("ckpt_v2.bin");
    if std::env::var_os("ROW_WRITE_FIXTURES").is_some() {
        std::fs::write(&path, c.encode(&image(), Epoch(4)).expect("encode")).expect("write");
    }
    let bytes = std::fs::read(&path).expect("checkpoint v2 fixture");
    assert_eq!(&bytes[..6], b"RRCK\x02\x00");
    let back = HeadCheckpoint::decode(&bytes, &image(), Epoch(4)).expect("decode v2");
    assert_eq!(back, c);
    assert_eq!(back.encode(&image(), Epoch(4)).expect("encode"), bytes);
    // A moved grain that is not a data grain is refused, not misread.
    c.delta.moved.insert(5000);
    let bad = c.encode(&image(), Epoch(4)).expect("encode");
    let e = HeadCheckpoint::decode(&bad, &image(), Epoch(4)).expect_err("moved outside data");
    assert_eq!(e.kind(), ErrorKind::Corrupt);
}

#[test]
fn damaged_or_misplaced_checkpoints_are_refused() {
    let bytes = std::fs::read(fixture()).expect("checkpoint fixture");
    for cut in 0..bytes.len() {
        let e = HeadCheckpoint::decode(&bytes[..cut], &image(), Epoch(4)).expect_err("cut");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        let e = HeadCheckpoint::decode(&bad, &image(), Epoch(4)).expect_err("flipped");
        assert!(
            matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported),
            "{e}"
        );
    }
    // Another epoch's or image's checkpoint is not this one.
    for (id, e) in [
        (image(), Epoch(5)),
        (ImageId("0badcafe00000001".into()), Epoch(4)),
    ] {
        let err = HeadCheckpoint::decode(&bytes, &id, e).expect_err("misplaced");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }
    // A header or epoch record is never read as a checkpoint.
    let epoch = sample()
        .delta
        .encode(&image(), Epoch(4), None)
        .expect("encode");
    let err = HeadCheckpoint::decode(&epoch, &image(), Epoch(4)).expect_err("epoch record");
    assert!(err.message().contains("magic"), "{err}");
    // A grain both data and zero, or generation 0, is refused with a valid crc.
    let mut c = sample();
    c.delta.zero.insert(5);
    let err = HeadCheckpoint::decode(
        &c.encode(&image(), Epoch(4)).expect("encode"),
        &image(),
        Epoch(4),
    )
    .expect_err("data and zero");
    assert!(err.message().contains("both data and zero"), "{err}");
    let mut c = sample();
    c.generation = 0;
    let err = HeadCheckpoint::decode(
        &c.encode(&image(), Epoch(4)).expect("encode"),
        &image(),
        Epoch(4),
    )
    .expect_err("generation 0");
    assert!(err.message().contains("generation 0"), "{err}");
}

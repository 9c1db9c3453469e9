//! Diff stream round trips, golden fixtures and corruption handling.

mod common;

use common::{apply, fixture, kind_of, read_diff, write_diff, Diff, Ext};
use rbd_streams::{
    sniff, validate_diff, DiffFormat, DiffReader, DiffRecord, DiffWriter, StreamErrorKind as K,
    StreamKind, ZeroDetect,
};
use std::io::Read;

fn sample(protected: Option<bool>) -> Diff {
    Diff {
        from: Some("snap1".into()),
        to: Some("snap2".into()),
        protected,
        size: 8192,
        exts: vec![Ext::Data(0, b"ABCD".to_vec()), Ext::Zero(4096, 4096)],
    }
}

// ---------------------------------------------------------------- goldens

#[test]
fn golden_v1_matches_hand_computed_bytes() {
    // Hand-computed from doc/dev/rbd-diff.rst, byte by byte.
    let mut want = b"rbd diff v1\n".to_vec();
    want.extend_from_slice(b"f\x05\x00\x00\x00snap1");
    want.extend_from_slice(b"t\x05\x00\x00\x00snap2");
    want.extend_from_slice(b"s\x00\x20\x00\x00\x00\x00\x00\x00");
    want.extend_from_slice(
        b"w\x00\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00ABCD",
    );
    want.extend_from_slice(b"z\x00\x10\x00\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00");
    want.push(b'e');
    assert_eq!(fixture("diff_v1.bin"), want);
    assert_eq!(write_diff(DiffFormat::V1, &sample(None)), want);
    let (fmt, d) = read_diff(&want).unwrap();
    assert_eq!(fmt, DiffFormat::V1);
    assert_eq!(d, sample(None));
}

#[test]
fn golden_v2_writer_and_reader() {
    let want = fixture("diff_v2.bin");
    assert_eq!(&want[..12], b"rbd diff v2\n");
    // 'f' record: tag, le64 4+5, le32 5, "snap1"
    assert_eq!(
        &want[12..30],
        b"f\x09\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00snap1"
    );
    // 'p' record after 't': tag, le64 1, 1
    assert_eq!(&want[48..58], b"p\x01\x00\x00\x00\x00\x00\x00\x00\x01");
    assert_eq!(*want.last().unwrap(), b'e');
    assert_eq!(write_diff(DiffFormat::V2, &sample(Some(true))), want);
    let (fmt, d) = read_diff(&want).unwrap();
    assert_eq!(fmt, DiffFormat::V2);
    assert_eq!(d, sample(Some(true)));
}

#[test]
fn golden_v2_unknown_tags_are_skipped_by_length() {
    let bytes = fixture("diff_v2_unknown_tag.bin");
    let (_, d) = read_diff(&bytes).unwrap();
    assert_eq!(d, sample(Some(true)));
    let sum = validate_diff(&bytes[..]).unwrap();
    assert_eq!(sum.skipped_records, 2);
    assert_eq!(sum.stream_len, bytes.len() as u64);
}

#[test]
fn summary_of_fixture() {
    let bytes = fixture("diff_v1.bin");
    let s = validate_diff(&bytes[..]).unwrap();
    assert_eq!(s.format, DiffFormat::V1);
    assert_eq!(s.from_snap.as_deref(), Some("snap1"));
    assert_eq!(s.to_snap.as_deref(), Some("snap2"));
    assert_eq!(s.protected, None);
    assert_eq!(s.size, Some(8192));
    assert_eq!(
        (s.data_extents, s.data_bytes, s.zero_extents, s.zero_bytes),
        (1, 4, 1, 4096)
    );
    assert_eq!(s.stream_len, bytes.len() as u64);
}

// ------------------------------------------------------------ round trips

#[test]
fn round_trip_every_record_type_both_versions() {
    for fmt in [DiffFormat::V1, DiffFormat::V2] {
        let variants = [
            Diff {
                size: 0,
                ..Default::default()
            },
            Diff {
                from: Some("a".into()),
                size: 1 << 40,
                ..Default::default()
            },
            Diff {
                to: Some("to-snap with spaces ✓".into()),
                protected: (fmt == DiffFormat::V2).then_some(false),
                size: 10,
                exts: vec![Ext::Zero(0, 10)],
                ..Default::default()
            },
            Diff {
                from: Some(String::new()),
                to: Some("x".repeat(4096)),
                protected: (fmt == DiffFormat::V2).then_some(true),
                size: 1 << 20,
                exts: vec![
                    Ext::Data(0, vec![7; 1]),
                    Ext::Data(1, vec![8; 4095]),
                    Ext::Zero(4096, 4096),
                    Ext::Data(8192, (0..200_000u32).map(|i| (i % 251) as u8).collect()),
                    Ext::Zero((1 << 20) - 1, 1),
                ],
            },
        ];
        for d in variants {
            let bytes = write_diff(fmt, &d);
            let (got_fmt, got) = read_diff(&bytes).unwrap();
            assert_eq!(got_fmt, fmt);
            assert_eq!(got, d);
            let s = validate_diff(&bytes[..]).unwrap();
            assert_eq!(s.stream_len, bytes.len() as u64);
            assert_eq!(s.size, Some(d.size));
        }
    }
}

#[test]
fn metadata_order_is_free_before_data() {
    // Spec: order of metadata records is not important.
    let mut w = DiffWriter::new(Vec::new(), DiffFormat::V2).unwrap();
    w.size(100).unwrap();
    w.to_snap("t").unwrap();
    w.protection(true).unwrap();
    w.from_snap("f").unwrap();
    w.data(10, b"xy").unwrap();
    let bytes = w.finish().unwrap();
    let (_, d) = read_diff(&bytes).unwrap();
    assert_eq!(d.from.as_deref(), Some("f"));
    assert_eq!(d.protected, Some(true));
}

#[test]
fn payload_streaming_api() {
    let mut w = DiffWriter::new(Vec::new(), DiffFormat::V1).unwrap();
    w.size(1 << 20).unwrap();
    w.begin_data(0, 10).unwrap();
    w.write_data(b"0123").unwrap();
    w.write_data(b"456789").unwrap();
    w.data_from_reader(100, 5, &mut &b"hello world"[..])
        .unwrap();
    assert!(w.extent(200, &[0; 512]).unwrap());
    assert!(!w.extent(1000, &[0, 0, 1]).unwrap());
    w.data(5000, b"skipme").unwrap();
    w.data(6000, b"tail").unwrap();
    let bytes = w.finish().unwrap();

    let mut r = DiffReader::new(&bytes[..]).unwrap();
    assert_eq!(r.next_record().unwrap(), Some(DiffRecord::Size(1 << 20)));
    assert_eq!(
        r.next_record().unwrap(),
        Some(DiffRecord::Data { offset: 0, len: 10 })
    );
    let mut b3 = [0u8; 3];
    assert_eq!(r.read_data(&mut b3).unwrap(), 3);
    assert_eq!(&b3, b"012");
    assert_eq!(r.data_remaining(), 7);
    let mut rest = String::new();
    r.data_reader().read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "3456789");
    assert_eq!(r.read_data(&mut b3).unwrap(), 0);
    assert_eq!(
        r.next_record().unwrap(),
        Some(DiffRecord::Data {
            offset: 100,
            len: 5
        })
    );
    let mut out = Vec::new();
    assert_eq!(r.copy_data_to(&mut out).unwrap(), 5);
    assert_eq!(out, b"hello");
    assert_eq!(
        r.next_record().unwrap(),
        Some(DiffRecord::Zero {
            offset: 200,
            len: 512
        })
    );
    assert_eq!(
        r.next_record().unwrap(),
        Some(DiffRecord::Data {
            offset: 1000,
            len: 3
        })
    );
    assert_eq!(r.read_data_to_vec().unwrap(), vec![0, 0, 1]);
    // Unread payloads are skipped automatically.
    assert_eq!(
        r.next_record().unwrap(),
        Some(DiffRecord::Data {
            offset: 5000,
            len: 6
        })
    );
    r.skip_data(2).unwrap();
    assert_eq!(kind_of(r.skip_data(5)), K::Usage);
    assert_eq!(
        r.next_record().unwrap(),
        Some(DiffRecord::Data {
            offset: 6000,
            len: 4
        })
    );
    assert_eq!(r.next_record().unwrap(), Some(DiffRecord::End));
    assert_eq!(r.next_record().unwrap(), None);
}

// ------------------------------------------------------------ corruption

fn v1(records: &[&[u8]]) -> Vec<u8> {
    let mut v = b"rbd diff v1\n".to_vec();
    for r in records {
        v.extend_from_slice(r);
    }
    v
}

fn v2(records: &[&[u8]]) -> Vec<u8> {
    let mut v = b"rbd diff v2\n".to_vec();
    for r in records {
        v.extend_from_slice(r);
    }
    v
}

fn le(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

fn rec(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![tag];
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

fn err(bytes: &[u8]) -> K {
    let k = kind_of(validate_diff(bytes));
    // The record-by-record API must agree with validate_diff.
    assert_eq!(kind_of(read_diff(bytes)), k);
    k
}

#[test]
fn bad_banner() {
    assert_eq!(err(b"rbd diff v3\ns\0\0\0\0\0\0\0\0e"), K::BadBanner);
    assert_eq!(err(b"hello"), K::BadBanner);
    assert_eq!(err(b"rbd image v2\n"), K::BadBanner);
    assert_eq!(err(b"RBD DIFF V1\n"), K::BadBanner);
    // A prefix of a valid banner is a truncated stream.
    assert_eq!(err(b""), K::Truncated);
    assert_eq!(err(b"rbd diff"), K::Truncated);
    // Version pinning.
    let v2 = fixture("diff_v2.bin");
    assert_eq!(
        kind_of(DiffReader::with_format(&v2[..], DiffFormat::V1)),
        K::BadBanner
    );
    assert!(DiffReader::with_format(&v2[..], DiffFormat::V2).is_ok());
}

#[test]
fn every_prefix_is_refused_as_truncated_or_missing_end() {
    for name in ["diff_v1.bin", "diff_v2.bin", "diff_v2_unknown_tag.bin"] {
        let bytes = fixture(name);
        // Record boundaries: EOF there means the 'e' record is missing.
        let boundaries: Vec<usize> = {
            let mut r = DiffReader::new(&bytes[..]).unwrap();
            let mut b = vec![r.position() as usize];
            while let Some(rec) = r.next_record().unwrap() {
                if let DiffRecord::Data { len, .. } = rec {
                    r.skip_data(len).unwrap();
                }
                b.push(r.position() as usize);
            }
            b
        };
        for cut in 0..bytes.len() {
            let k = err(&bytes[..cut]);
            if cut >= 12 && boundaries.contains(&cut) && !name.contains("unknown") {
                assert_eq!(k, K::MissingEnd, "{name} cut at {cut}");
            } else {
                assert!(
                    matches!(k, K::Truncated | K::MissingEnd),
                    "{name} cut at {cut}: {k:?}"
                );
            }
        }
    }
}

#[test]
fn truncated_mid_record() {
    let full = fixture("diff_v1.bin");
    // Cut inside the "ABCD" payload.
    let cut = full.windows(4).position(|w| w == b"ABCD").unwrap() + 2;
    assert_eq!(err(&full[..cut]), K::Truncated);
    // Cut inside the 'z' header.
    assert_eq!(err(&full[..full.len() - 5]), K::Truncated);
    // Missing only the 'e'.
    assert_eq!(err(&full[..full.len() - 1]), K::MissingEnd);
}

#[test]
fn names_longer_than_4k_are_refused() {
    let long = vec![b'a'; 4097];
    let ok = vec![b'a'; 4096];
    let mk = |name: &[u8]| {
        v1(&[
            &rec(b'f', &[&(name.len() as u32).to_le_bytes(), name]),
            &rec(b's', &[&le(0)]),
            b"e",
        ])
    };
    assert!(validate_diff(&mk(&ok)[..]).is_ok());
    assert_eq!(err(&mk(&long)), K::NameTooLong);
    // A garbage length must not be trusted for allocation either.
    assert_eq!(
        err(&v1(&[&rec(b't', &[&u32::MAX.to_le_bytes()])])),
        K::NameTooLong
    );
    // v2 too.
    let b = v2(&[&rec(b't', &[&le(4 + 5000), &5000u32.to_le_bytes()])]);
    assert_eq!(err(&b), K::NameTooLong);
}

#[test]
fn non_utf8_names_are_refused() {
    let b = v1(&[
        &rec(b'f', &[&2u32.to_le_bytes(), b"\xff\xfe"]),
        &rec(b's', &[&le(0)]),
        b"e",
    ]);
    assert_eq!(err(&b), K::InvalidUtf8);
}

#[test]
fn v2_length_mismatches() {
    let size = rec(b's', &[&le(8), &le(8192)]);
    // 'w' whose record length does not match its data length.
    let w = rec(b'w', &[&le(16 + 5), &le(0), &le(4), b"ABCDE"]);
    assert_eq!(err(&v2(&[&size, &w, b"e"])), K::LengthMismatch);
    let w = rec(b'w', &[&le(3), &le(0), &le(4), b"ABCD"]);
    assert_eq!(err(&v2(&[&size, &w, b"e"])), K::LengthMismatch);
    // 's' with length 9.
    assert_eq!(
        err(&v2(&[&rec(b's', &[&le(9), &le(1), b"x"]), b"e"])),
        K::LengthMismatch
    );
    // 'z' with length 17.
    assert_eq!(
        err(&v2(&[
            &size,
            &rec(b'z', &[&le(17), &le(0), &le(4), b"x"]),
            b"e"
        ])),
        K::LengthMismatch
    );
    // 'f' whose record length disagrees with the name length.
    let f = rec(b'f', &[&le(4 + 6), &5u32.to_le_bytes(), b"snap1"]);
    assert_eq!(err(&v2(&[&f, &size, b"e"])), K::LengthMismatch);
    let f = rec(b'f', &[&le(2), &5u32.to_le_bytes(), b"snap1"]);
    assert_eq!(err(&v2(&[&f, &size, b"e"])), K::LengthMismatch);
    // 'p' with length 2.
    let t = rec(b't', &[&le(5), &1u32.to_le_bytes(), b"t"]);
    assert_eq!(
        err(&v2(&[&t, &rec(b'p', &[&le(2), b"\x01\x00"]), &size, b"e"])),
        K::LengthMismatch
    );
}

#[test]
fn protection_record_length_8_as_written_by_rbd_16_2() {
    // Observed from `rbd export --export-format 2` of Ceph 16.2.15: 'p',
    // le64 8, then a single payload byte.
    let t = rec(b't', &[&le(5), &1u32.to_le_bytes(), b"t"]);
    let s = rec(b's', &[&le(8), &le(0)]);
    let b = v2(&[&t, &rec(b'p', &[&le(8), b"\x01"]), &s, b"e"]);
    let (_, d) = read_diff(&b).unwrap();
    assert_eq!(d.protected, Some(true));
    // The writer can reproduce it.
    let mut w = DiffWriter::new(Vec::new(), DiffFormat::V2).unwrap();
    w.set_protection_len(rbd_streams::ProtectionLen::Pacific);
    w.to_snap("t").unwrap();
    w.protection(true).unwrap();
    w.size(0).unwrap();
    assert_eq!(w.finish().unwrap(), b);
}

#[test]
fn invalid_protection_byte() {
    let t = rec(b't', &[&le(5), &1u32.to_le_bytes(), b"t"]);
    let b = v2(&[
        &t,
        &rec(b'p', &[&le(1), b"\x02"]),
        &rec(b's', &[&le(8), &le(0)]),
        b"e",
    ]);
    assert_eq!(err(&b), K::InvalidValue);
}

#[test]
fn extents_beyond_size() {
    let size = rec(b's', &[&le(8192)]);
    let w = rec(b'w', &[&le(8190), &le(4), b"ABCD"]);
    assert_eq!(err(&v1(&[&size, &w, b"e"])), K::ExtentBeyondSize);
    let z = rec(b'z', &[&le(8192), &le(1)]);
    assert_eq!(err(&v1(&[&size, &z, b"e"])), K::ExtentBeyondSize);
    // offset + len overflows u64.
    let z = rec(b'z', &[&le(u64::MAX), &le(2)]);
    assert_eq!(
        err(&v1(&[&rec(b's', &[&le(u64::MAX)]), &z, b"e"])),
        K::ExtentBeyondSize
    );
    // Absurd data length: refused before any allocation or read.
    let w = rec(b'w', &[&le(0), &le(1 << 60)]);
    assert_eq!(err(&v1(&[&size, &w])), K::ExtentBeyondSize);
    // v2: absurd data length with a matching record length.
    let w = rec(b'w', &[&le(16 + (1 << 60)), &le(0), &le(1 << 60)]);
    assert_eq!(
        err(&v2(&[&rec(b's', &[&le(8), &le(8192)]), &w])),
        K::ExtentBeyondSize
    );
    // Exactly at the end is fine.
    let w = rec(b'w', &[&le(8188), &le(4), b"ABCD"]);
    assert!(validate_diff(&v1(&[&size, &w, b"e"])[..]).is_ok());
}

#[test]
fn overlapping_or_unordered_extents() {
    let size = rec(b's', &[&le(8192)]);
    let a = rec(b'z', &[&le(100), &le(100)]);
    let overlap = rec(b'z', &[&le(150), &le(10)]);
    let before = rec(b'w', &[&le(0), &le(1), b"x"]);
    let adjacent = rec(b'z', &[&le(200), &le(10)]);
    assert_eq!(err(&v1(&[&size, &a, &overlap, b"e"])), K::ExtentOrder);
    assert_eq!(err(&v1(&[&size, &a, &before, b"e"])), K::ExtentOrder);
    assert!(validate_diff(&v1(&[&size, &a, &adjacent, b"e"])[..]).is_ok());
}

#[test]
fn metadata_after_data() {
    let size = rec(b's', &[&le(8192)]);
    let z = rec(b'z', &[&le(0), &le(1)]);
    let t = rec(b't', &[&1u32.to_le_bytes(), b"t"]);
    assert_eq!(err(&v1(&[&size, &z, &t, b"e"])), K::MetadataAfterData);
    assert_eq!(err(&v1(&[&size, &z, &size, b"e"])), K::MetadataAfterData);
}

#[test]
fn duplicate_metadata_and_missing_size() {
    let size = rec(b's', &[&le(8192)]);
    assert_eq!(err(&v1(&[&size, &size, b"e"])), K::DuplicateMetadata);
    let f = rec(b'f', &[&1u32.to_le_bytes(), b"f"]);
    assert_eq!(err(&v1(&[&f, &f, &size, b"e"])), K::DuplicateMetadata);
    let z = rec(b'z', &[&le(0), &le(1)]);
    assert_eq!(err(&v1(&[&z, b"e"])), K::MissingSize);
    assert_eq!(err(&v1(&[b"e"])), K::MissingSize);
}

#[test]
fn missing_end_and_trailing_data() {
    let size = rec(b's', &[&le(8192)]);
    assert_eq!(err(&v1(&[&size])), K::MissingEnd);
    assert_eq!(err(&v1(&[&size, b"e", b"e"])), K::TrailingData);
    let mut b = fixture("diff_v2.bin");
    b.push(0);
    assert_eq!(err(&b), K::TrailingData);
}

#[test]
fn unknown_tags() {
    let size = rec(b's', &[&le(8192)]);
    // v1 cannot skip what it does not know.
    assert_eq!(err(&v1(&[&size, b"X", b"e"])), K::UnknownTag);
    // 'p' does not exist in v1.
    assert_eq!(
        err(&v1(&[&rec(b'p', &[b"\x01"]), &size, b"e"])),
        K::UnknownTag
    );
    // v2 skips by length, even zero-length and after data.
    let s2 = rec(b's', &[&le(8), &le(8192)]);
    let z = rec(b'z', &[&le(16), &le(0), &le(1)]);
    let b = v2(&[
        &rec(b'Q', &[&le(0)]),
        &s2,
        &z,
        &rec(b'R', &[&le(2), b"ab"]),
        b"e",
    ]);
    assert_eq!(validate_diff(&b[..]).unwrap().skipped_records, 2);
    // ... but a skip running past EOF is truncation, with no allocation.
    assert_eq!(err(&v2(&[&s2, &rec(b'Q', &[&le(u64::MAX)])])), K::Truncated);
}

#[test]
fn error_messages_say_where() {
    let size = rec(b's', &[&le(8192)]);
    let e = validate_diff(&v1(&[&size, &rec(b'w', &[&le(8190), &le(4), b"ABCD"]), b"e"])[..])
        .unwrap_err();
    assert!(e.message.contains("at byte 21"), "{}", e.message);
    assert!(e.message.contains("8192"), "{}", e.message);
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
}

// ------------------------------------------------------------ writer misuse

#[test]
fn writer_enforces_order_and_sanity() {
    let mut w = DiffWriter::new(Vec::new(), DiffFormat::V1).unwrap();
    assert_eq!(kind_of(w.data(0, b"x")), K::MissingSize);
    assert_eq!(kind_of(w.protection(true)), K::Usage); // v1
    assert_eq!(kind_of(w.to_snap(&"n".repeat(4097))), K::NameTooLong);
    w.to_snap("t").unwrap();
    assert_eq!(kind_of(w.to_snap("t2")), K::DuplicateMetadata);
    w.size(100).unwrap();
    assert_eq!(kind_of(w.size(100)), K::DuplicateMetadata);
    w.data(10, b"abc").unwrap();
    assert_eq!(kind_of(w.from_snap("f")), K::MetadataAfterData);
    assert_eq!(kind_of(w.zero(12, 5)), K::ExtentOrder);
    assert_eq!(kind_of(w.zero(5, 1)), K::ExtentOrder);
    assert_eq!(kind_of(w.zero(13, 0)), K::Usage);
    assert_eq!(kind_of(w.data(98, b"abc")), K::ExtentBeyondSize);
    assert_eq!(kind_of(w.zero(u64::MAX, 2)), K::ExtentBeyondSize);
    w.begin_data(13, 4).unwrap();
    assert_eq!(kind_of(w.zero(50, 1)), K::Usage); // payload pending
    assert_eq!(kind_of(w.write_data(b"12345")), K::Usage);
    w.write_data(b"1234").unwrap();
    w.zero(97, 3).unwrap();
    // Validation errors did not corrupt the output.
    let bytes = w.finish().unwrap();
    let (_, d) = read_diff(&bytes).unwrap();
    assert_eq!(
        d.exts,
        vec![
            Ext::Data(10, b"abc".to_vec()),
            Ext::Data(13, b"1234".to_vec()),
            Ext::Zero(97, 3)
        ]
    );

    let mut w = DiffWriter::new(Vec::new(), DiffFormat::V2).unwrap();
    assert_eq!(kind_of(w.protection(true)), K::Usage); // no to-snap yet
    assert_eq!(kind_of(w.finish()), K::MissingSize);

    // A short data source poisons the writer.
    let mut w = DiffWriter::new(Vec::new(), DiffFormat::V1).unwrap();
    w.size(100).unwrap();
    assert_eq!(
        kind_of(w.data_from_reader(0, 10, &mut &b"short"[..])),
        K::Truncated
    );
    assert_eq!(kind_of(w.zero(50, 1)), K::Usage);
}

#[test]
fn writer_surfaces_io_errors() {
    #[derive(Debug)]
    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "disk full",
            ))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let e = DiffWriter::new(Full, DiffFormat::V1).unwrap_err();
    assert_eq!(e.kind, K::Io);
    assert!(e.source.is_some());
}

// ------------------------------------------------------------ model apply

#[test]
fn applying_fixture_to_an_image() {
    let (_, d) = read_diff(&fixture("diff_v1.bin")).unwrap();
    let mut img = vec![0xffu8; 10000];
    apply(&mut img, &d);
    assert_eq!(img.len(), 8192);
    assert_eq!(&img[..4], b"ABCD");
    assert!(img[4..4096].iter().all(|&b| b == 0xff));
    assert!(img[4096..].iter().all(|&b| b == 0));
}

// ------------------------------------------------------------ helpers

#[test]
fn zero_detect() {
    assert!(ZeroDetect::is_zero(&[]));
    assert!(ZeroDetect::is_zero(&[0; 4096]));
    for i in 0..100 {
        let mut b = vec![0u8; 100];
        b[i] = 1;
        assert!(!ZeroDetect::is_zero(&b), "{i}");
    }
    let mut b = vec![0u8; 10_000];
    b[4096] = 9;
    b[9999] = 1;
    let runs: Vec<_> = ZeroDetect::runs(&b, 4096).collect();
    assert_eq!(runs, vec![(0, 4096, true), (4096, 5904, false)]);
    b[9999] = 0;
    let runs: Vec<_> = ZeroDetect::runs(&b, 4096).collect();
    assert_eq!(
        runs,
        vec![(0, 4096, true), (4096, 4096, false), (8192, 1808, true)]
    );
    assert_eq!(ZeroDetect::runs(&[], 0).count(), 0);
    assert_eq!(ZeroDetect::runs(&[0, 1, 0], 0).count(), 3);
}

#[test]
fn sniffing() {
    assert_eq!(sniff(&fixture("diff_v1.bin")), StreamKind::DiffV1);
    assert_eq!(sniff(&fixture("diff_v2.bin")), StreamKind::DiffV2);
    assert_eq!(
        sniff(&fixture("image_export_v2.bin")),
        StreamKind::ImageExportV2
    );
    assert_eq!(sniff(b"\0\0\0\0"), StreamKind::RawOrUnknown);
}

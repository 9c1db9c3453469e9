//! `rbd export --export-format 2` writer/reader.

mod common;

use common::{apply, fixture, kind_of, Diff, Ext};
use rbd_streams::{
    export_v1, validate_image_export, DiffWriter, ImageExportReader, ImageExportWriter,
    ImageHeader, StreamErrorKind as K, EXPORT_FORMAT_1_IS_RAW,
};

fn header() -> ImageHeader {
    ImageHeader {
        order: Some(22),
        features: Some(1),
        stripe_unit: Some(4 << 20),
        stripe_count: Some(1),
        metadata: [("conf_rbd_cache".to_string(), b"false".to_vec())]
            .into_iter()
            .collect(),
        skipped_tags: vec![],
    }
}

fn expected_diffs() -> Vec<Diff> {
    vec![
        Diff {
            from: None,
            to: Some("s1".into()),
            protected: Some(false),
            size: 8192,
            exts: vec![Ext::Data(0, b"abc".to_vec())],
        },
        Diff {
            from: Some("s1".into()),
            to: None,
            protected: None,
            size: 16384,
            exts: vec![Ext::Zero(0, 3), Ext::Data(8192, b"hi".to_vec())],
        },
    ]
}

fn write_export(h: &ImageHeader, diffs: &[Diff]) -> Vec<u8> {
    let mut w = ImageExportWriter::new(Vec::new(), h, diffs.len() as u64).unwrap();
    for d in diffs {
        w.diff(|dw| fill(dw, d)).unwrap();
    }
    assert_eq!(w.diffs_remaining(), 0);
    w.finish().unwrap()
}

fn fill<W: std::io::Write>(dw: &mut DiffWriter<W>, d: &Diff) -> rbd_streams::Result<()> {
    if let Some(f) = &d.from {
        dw.from_snap(f)?;
    }
    if let Some(t) = &d.to {
        dw.to_snap(t)?;
    }
    if let Some(p) = d.protected {
        dw.protection(p)?;
    }
    dw.size(d.size)?;
    for e in &d.exts {
        match e {
            Ext::Data(o, b) => dw.data(*o, b)?,
            Ext::Zero(o, l) => dw.zero(*o, *l)?,
        }
    }
    Ok(())
}

fn read_export(bytes: &[u8]) -> rbd_streams::Result<(ImageHeader, Vec<Diff>)> {
    let mut r = ImageExportReader::new(bytes)?;
    let h = r.header().clone();
    let mut diffs = Vec::new();
    while let Some(mut d) = r.next_diff()? {
        diffs.push(read_loop!(d)?);
    }
    Ok((h, diffs))
}

fn err(bytes: &[u8]) -> K {
    let k = kind_of(validate_image_export(bytes));
    assert_eq!(kind_of(read_export(bytes)), k);
    k
}

#[test]
fn golden_image_export() {
    let want = fixture("image_export_v2.bin");
    // Spot-check the hand-computed layout.
    assert_eq!(&want[..13], b"rbd image v2\n");
    assert_eq!(&want[13..30], b"O\x08\0\0\0\0\0\0\0\x16\0\0\0\0\0\0\0");
    let m = want.iter().position(|&b| b == b'M').unwrap();
    assert_eq!(&want[m..m + 9], b"M\x1b\0\0\0\0\0\0\0"); // 14 + 5 + 8 = 27
    let diffs_banner = want
        .windows(19)
        .position(|w| w == b"rbd image diffs v2\n")
        .unwrap();
    assert_eq!(want[diffs_banner - 1], b'E');
    assert_eq!(
        &want[diffs_banner + 19..diffs_banner + 27],
        &2u64.to_le_bytes()
    );
    assert_eq!(
        &want[diffs_banner + 27..diffs_banner + 39],
        b"rbd diff v2\n"
    );

    assert_eq!(write_export(&header(), &expected_diffs()), want);
    let (h, diffs) = read_export(&want).unwrap();
    assert_eq!(h, header());
    assert_eq!(diffs, expected_diffs());

    let sum = validate_image_export(&want[..]).unwrap();
    assert_eq!(sum.header, header());
    assert_eq!(sum.diffs.len(), 2);
    assert_eq!(sum.diffs[1].from_snap.as_deref(), Some("s1"));

    // Applying the chain yields HEAD.
    let mut img = Vec::new();
    for d in &diffs {
        apply(&mut img, d);
    }
    assert_eq!(img.len(), 16384);
    assert_eq!(&img[..3], b"\0\0\0");
    assert_eq!(&img[8192..8194], b"hi");
}

#[test]
fn round_trip_many_snapshots_and_sparse_header() {
    let h = ImageHeader {
        order: Some(12),
        ..Default::default()
    };
    let mut diffs = Vec::new();
    let mut prev: Option<String> = None;
    for i in 0..5u64 {
        let to = (i < 4).then(|| format!("snap{i}"));
        diffs.push(Diff {
            from: prev.clone(),
            to: to.clone(),
            protected: to.as_ref().map(|_| i % 2 == 0),
            size: 4096 * (i + 1),
            exts: vec![Ext::Data(4096 * i, vec![i as u8 + 1; 4096])],
        });
        prev = to;
    }
    let bytes = write_export(&h, &diffs);
    let (h2, d2) = read_export(&bytes).unwrap();
    assert_eq!(h2, h);
    assert_eq!(d2, diffs);
}

#[test]
fn reader_streams_payloads_and_refuses_skipping_a_diff() {
    let bytes = fixture("image_export_v2.bin");
    let mut r = ImageExportReader::new(&bytes[..]).unwrap();
    assert_eq!(r.diff_count(), 2);
    {
        let mut d = r.next_diff().unwrap().unwrap();
        assert_eq!(d.index(), 0);
        d.next_record().unwrap(); // 't'
    }
    assert_eq!(kind_of(r.next_diff().map(|o| o.is_some())), K::Usage);
}

#[test]
fn unknown_header_tags_are_skipped() {
    let mut b = fixture("image_export_v2.bin");
    // Insert an 'F' (format) record, which the doc lists but rbd never writes.
    let mut f = vec![b'F'];
    f.extend_from_slice(&8u64.to_le_bytes());
    f.extend_from_slice(&2u64.to_le_bytes());
    b.splice(13..13, f);
    let (h, diffs) = read_export(&b).unwrap();
    assert_eq!(h.skipped_tags, vec![b'F']);
    assert_eq!(h.order, Some(22));
    assert_eq!(diffs, expected_diffs());
}

fn patched(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = fixture("image_export_v2.bin");
    f(&mut b);
    b
}

fn find(b: &[u8], pat: &[u8]) -> usize {
    b.windows(pat.len()).position(|w| w == pat).unwrap()
}

#[test]
fn corruptions() {
    assert_eq!(err(b"rbd image v1\n"), K::BadBanner);
    assert_eq!(err(&fixture("diff_v1.bin")), K::BadBanner);
    assert_eq!(err(b"rbd ima"), K::Truncated);
    // Diffs banner.
    assert_eq!(
        err(&patched(|b| {
            let i = find(b, b"diffs v2");
            b[i] = b'D';
        })),
        K::BadBanner
    );
    // Count 0.
    assert_eq!(
        err(&patched(|b| {
            let i = find(b, b"diffs v2\n") + 9;
            b[i] = 0;
        })),
        K::InvalidValue
    );
    // Count larger than the diffs present: diff #1 of 3 ends at HEAD, which
    // only the last may do.
    assert_eq!(
        err(&patched(|b| {
            let i = find(b, b"diffs v2\n") + 9;
            b[i] = 3;
        })),
        K::SnapMismatch
    );
    // Count smaller: the first diff is then the last one and must end at HEAD.
    assert_eq!(
        err(&patched(|b| {
            let i = find(b, b"diffs v2\n") + 9;
            b[i] = 1;
        })),
        K::SnapMismatch
    );
    // 'O' with length 9.
    assert_eq!(err(&patched(|b| b[14] = 9)), K::LengthMismatch);
    // Duplicate 'O'.
    assert_eq!(
        err(&patched(|b| {
            let o = b[13..30].to_vec();
            b.splice(30..30, o);
        })),
        K::DuplicateMetadata
    );
    // 'M' length one too large / absurd.
    let m = find(&fixture("image_export_v2.bin"), b"M\x1b");
    assert_eq!(err(&patched(|b| b[m + 1] = 0x1c)), K::LengthMismatch);
    assert_eq!(err(&patched(|b| b[m + 8] = 0x10)), K::AbsurdLength);
    // Embedded diff with a v1 banner.
    assert_eq!(
        err(&patched(|b| {
            let i = find(b, b"rbd diff v2\n");
            b[i + 10] = b'1';
        })),
        K::BadBanner
    );
    // Chain broken: second diff starts from "s2" instead of "s1".
    assert_eq!(
        err(&patched(|b| {
            let i = find(b, b"f\x06\0\0\0\0\0\0\0\x02\0\0\0s1") + 14;
            b[i] = b'2';
        })),
        K::SnapMismatch
    );
    // Trailing garbage after the last diff.
    assert_eq!(err(&patched(|b| b.push(b'e'))), K::TrailingData);
    // Truncation anywhere.
    let full = fixture("image_export_v2.bin");
    for cut in 0..full.len() {
        let k = err(&full[..cut]);
        assert!(
            matches!(k, K::Truncated | K::MissingEnd),
            "cut {cut}: {k:?}"
        );
    }
}

#[test]
fn writer_enforces_the_chain() {
    let h = ImageHeader::default();
    assert_eq!(kind_of(ImageExportWriter::new(Vec::new(), &h, 0)), K::Usage);

    // First diff must not have a from-snap.
    let mut w = ImageExportWriter::new(Vec::new(), &h, 2).unwrap();
    let r = w.diff(|d| {
        d.from_snap("x")?;
        d.to_snap("s1")?;
        d.size(0)
    });
    assert_eq!(kind_of(r), K::SnapMismatch);

    // Non-last diff needs a to-snap.
    let mut w = ImageExportWriter::new(Vec::new(), &h, 2).unwrap();
    assert_eq!(kind_of(w.diff(|d| d.size(0))), K::SnapMismatch);
    // ... and the writer is unusable afterwards.
    assert_eq!(kind_of(w.diff(|d| d.size(0))), K::Usage);

    // Last diff must end at HEAD; chain must continue.
    let mut w = ImageExportWriter::new(Vec::new(), &h, 2).unwrap();
    w.diff(|d| {
        d.to_snap("s1")?;
        d.size(0)
    })
    .unwrap();
    assert_eq!(
        kind_of(w.diff(|d| {
            d.from_snap("s1")?;
            d.to_snap("s2")?;
            d.size(0)
        })),
        K::SnapMismatch
    );
    let mut w = ImageExportWriter::new(Vec::new(), &h, 2).unwrap();
    w.diff(|d| {
        d.to_snap("s1")?;
        d.size(0)
    })
    .unwrap();
    assert_eq!(kind_of(w.diff(|d| d.size(0))), K::SnapMismatch);

    // Finishing early / writing too many.
    let mut w = ImageExportWriter::new(Vec::new(), &h, 1).unwrap();
    w.diff(|d| d.size(0)).unwrap();
    assert_eq!(kind_of(w.diff(|d| d.size(0))), K::Usage);
    let w = ImageExportWriter::new(Vec::new(), &h, 1).unwrap();
    assert_eq!(kind_of(w.finish()), K::Usage);
}

#[test]
fn export_format_1_is_raw_bytes() {
    const { assert!(EXPORT_FORMAT_1_IS_RAW) };
    let img: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let mut out = Vec::new();
    assert_eq!(export_v1(&img[..], 10_000, &mut out).unwrap(), 10_000);
    assert_eq!(out, img);
    assert_eq!(
        kind_of(export_v1(&img[..], 10_001, Vec::new())),
        K::Truncated
    );
}

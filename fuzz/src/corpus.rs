//! The committed seed corpora (`fuzz/corpus/<target>/*.bin`), generated
//! here from the real encoders so they stay valid encodings. Regenerate
//! with `cargo run --example gen_corpus` in `fuzz/`.

use crate::nbd;
use crate::records::{payload_of, sample_deltas, sample_headers, sample_payloads, Kind};
use rbd_streams::{DiffFormat, DiffWriter, ImageExportWriter, ImageHeader};
use row_layer::header_format::HEADER_ENTRY;
use row_layer::records::{EPOCH, HEADER};

/// One seed: target, file name, contents.
pub type Seed = (&'static str, String, Vec<u8>);

const STREAM_FIXTURES: [(&str, &[u8]); 4] = [
    (
        "diff_v1.bin",
        include_bytes!("../../rbd-gateway/rbd-streams/tests/fixtures/diff_v1.bin"),
    ),
    (
        "diff_v2.bin",
        include_bytes!("../../rbd-gateway/rbd-streams/tests/fixtures/diff_v2.bin"),
    ),
    (
        "diff_v2_unknown_tag.bin",
        include_bytes!("../../rbd-gateway/rbd-streams/tests/fixtures/diff_v2_unknown_tag.bin"),
    ),
    (
        "image_export_v2.bin",
        include_bytes!("../../rbd-gateway/rbd-streams/tests/fixtures/image_export_v2.bin"),
    ),
];

fn diff(format: DiffFormat, from: Option<&str>, zero_at: u64) -> Vec<u8> {
    let mut w = DiffWriter::new(Vec::new(), format).expect("writer");
    if let Some(f) = from {
        w.from_snap(f).expect("from");
    }
    w.to_snap("s2").expect("to");
    w.size(1 << 20).expect("size");
    w.data(4096, &[0xab; 100]).expect("data");
    w.zero(zero_at, 8192).expect("zero");
    w.data(65536, &[1, 2, 3]).expect("data");
    w.finish().expect("finish")
}

fn image_export() -> Vec<u8> {
    let mut header = ImageHeader {
        order: Some(22),
        features: Some(1),
        stripe_unit: Some(4 << 20),
        stripe_count: Some(1),
        ..Default::default()
    };
    header
        .metadata
        .insert("conf_rbd_cache".into(), b"false".to_vec());
    let mut w = ImageExportWriter::new(Vec::new(), &header, 2).expect("writer");
    w.diff(|d| {
        d.to_snap("s1")?;
        d.protection(true)?;
        d.size(1 << 20)?;
        d.data(0, &[7; 600])?;
        d.zero(8192, 4096)
    })
    .expect("diff 1");
    w.diff(|d| {
        d.from_snap("s1")?;
        d.size(2 << 20)?;
        d.data(1 << 20, &[9; 30])
    })
    .expect("diff 2");
    w.finish().expect("finish")
}

/// Every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();

    // records: complete encoded records.
    for (i, h) in sample_headers().iter().enumerate() {
        let (payload, entries) = crate::records::encode_header(h);
        out.push(("records", format!("header_{i}.bin"), payload));
        for (j, (_, v)) in entries.into_iter().enumerate() {
            out.push(("records", format!("header_{i}_entry_{j}.bin"), v.to_vec()));
        }
    }
    for (i, (id, e, p, d)) in sample_deltas().iter().enumerate() {
        let b = d.encode(id, *e, *p).expect("e");
        out.push(("records", format!("epoch_{i}.bin"), b));
    }

    // ckpt_record: mode (raw / enveloped payload), version selector (when
    // enveloped), bytes; the sample deltas as head checkpoints.
    for (i, (id, e, _, d)) in sample_deltas().iter().enumerate() {
        let c = row_layer::ckpt_record::HeadCheckpoint {
            generation: i as u64 + 1,
            delta: row_layer::records::EpochDelta {
                reclaimed: Default::default(),
                ..d.clone()
            },
        };
        let b = c.encode(id, *e).expect("c");
        let mut raw = vec![0];
        raw.extend_from_slice(&b);
        out.push(("ckpt_record", format!("raw_{i}.bin"), raw));
        // Enveloped under the version it was written as (format 1 when
        // nothing is moved: selector 0xf7, the oldest readable).
        let ver = if b[4] == 1 { 0xf7 } else { 0 };
        let mut enveloped = vec![1, ver];
        enveloped.extend_from_slice(&payload_of(row_layer::ckpt_record::CHECKPOINT, &b));
        out.push(("ckpt_record", format!("payload_{i}.bin"), enveloped));
    }

    // records_envelope: kind, version selector, payload.
    for (i, (kind, payload)) in sample_payloads().into_iter().enumerate() {
        let sel = match kind {
            Kind::Header => 0,
            Kind::Epoch => 1,
            Kind::Entry => 2,
        };
        let mut b = vec![sel, seed_version(kind, &payload)];
        b.extend_from_slice(&payload);
        out.push(("records_envelope", format!("sample_{i}.bin"), b.clone()));
        if i == 0 {
            b[1] = 0xfa; // next version: refused
            out.push(("records_envelope", "newer_version.bin".into(), b));
        }
    }

    // records_mutate: sample, version selector, edits.
    let n = sample_payloads().len() as u8;
    for (i, (kind, payload)) in (0..n).zip(sample_payloads()) {
        let ver = seed_version(kind, &payload);
        out.push(("records_mutate", format!("sample_{i}.bin"), vec![i, ver]));
    }
    out.push((
        "records_mutate",
        "edits.bin".into(),
        vec![2, 0, 0, 0, 9, 0x41, 5, 0, 40, 3, 8, 0, 3, 1],
    ));
    out.push((
        "records_mutate",
        "edits_epoch.bin".into(),
        vec![n - 1, 0, 1, 0, 60, 2, 6, 0, 80, 0xe1, 2, 0, 100, 0xff],
    ));

    // diff_stream / image_export: the rbd-streams fixtures and fresh encodings.
    for (name, bytes) in STREAM_FIXTURES {
        let target = if name.starts_with("image") {
            "image_export"
        } else {
            "diff_stream"
        };
        out.push((target, name.into(), bytes.to_vec()));
    }
    out.push((
        "diff_stream",
        "diff_v1_gen.bin".into(),
        diff(DiffFormat::V1, Some("s1"), 16384),
    ));
    out.push((
        "diff_stream",
        "diff_v2_gen.bin".into(),
        diff(DiffFormat::V2, None, 8192),
    ));
    // Two diffs back to back, first byte = where merge_diffs cuts.
    let a = diff(DiffFormat::V1, None, 16384);
    let b = diff(DiffFormat::V1, Some("s1"), 32768);
    let mut m = vec![a.len() as u8];
    m.extend_from_slice(&a);
    m.extend_from_slice(&b);
    out.push(("diff_stream", "merge_pair.bin".into(), m));
    out.push((
        "image_export",
        "image_export_gen.bin".into(),
        image_export(),
    ));

    // nbd_session: handshake selector, then 6-byte requests.
    let r = |op: u8, f: u8, off: u16, len: u16| {
        let o = off.to_be_bytes();
        let l = len.to_be_bytes();
        [op, f, o[0], o[1], l[0], l[1]]
    };
    let mixed: Vec<[u8; 6]> = vec![
        r(0x01, 0, 1, 4096),     // write 4 KiB at 4 KiB
        r(0x00, 0, 1, 4096),     // read it
        r(0x00, 0, 0, 16384),    // read a range with holes
        r(0x07, 0, 0, 65535),    // block status
        r(0x07, 0x08, 0, 8192),  // block status REQ_ONE
        r(0x06, 0x01, 2, 8192),  // write zeroes FUA
        r(0x04, 0, 3, 4096),     // trim
        r(0x05, 0, 0, 4096),     // cache
        r(0x03, 0, 0, 0),        // flush
        r(0x00, 0x04, 0, 12288), // read DF
        r(0x20, 0, 10, 100),     // read ending past the end
        r(0x30, 0, 0, 1),        // offset near u64::MAX
        r(0x80, 0, 0, 0),        // length near u32::MAX
        r(0x41, 0, 4, 200),      // write 100 KiB: too large, discarded
        r(0x09, 0, 0, 0),        // unknown command
        r(0x00, 0x80, 0, 512),   // unknown flag
        r(0x02, 0, 0, 0),        // DISC
    ];
    let reqs = |v: &[[u8; 6]]| v.iter().flatten().copied().collect::<Vec<u8>>();
    let mut sessions: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, sel) in [
        ("mem_simple", 0x00u8),
        ("mem_structured_meta", 0x07),
        ("ro_export_name", 0x19),
        ("img_structured_meta", 0x27),
        ("img_extra_options", 0x67),
        ("img_snapshot", 0x37),
        ("img_small_limits", 0xa7),
        ("mem_small_simple", 0x81),
    ] {
        let mut b = vec![sel];
        b.extend_from_slice(&reqs(&mixed));
        sessions.push((format!("{name}.bin"), b));
    }
    // A session ending in a write too large even to discard.
    let mut b = vec![0x83];
    b.extend_from_slice(&reqs(&[r(0x01, 0, 0, 512), r(0x41, 0, 0, 1000)]));
    sessions.push(("close_on_huge_write.bin".into(), b));
    // A raw tail after two requests.
    let mut b = vec![0x27];
    b.extend_from_slice(&reqs(&[r(0x01, 0, 0, 512), r(0x07, 0, 0, 4096)]));
    b.push(0xff);
    b.extend_from_slice(&row_nbd::proto::REQUEST_MAGIC.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    sessions.push(("raw_tail.bin".into(), b));

    for (name, b) in &sessions {
        // nbd_raw: the client byte stream these sessions send, behind the
        // config selector byte; without the 100 KiB discarded write, which
        // would make every raw seed that large.
        let mut small = vec![b[0]];
        for c in b[1..].chunks(6) {
            if c.len() < 6 || c[0] != 0x41 {
                small.extend_from_slice(c);
            }
        }
        let p = nbd::plan(&small).expect("plan");
        let mut raw = vec![u8::from(p.small)];
        raw.extend_from_slice(&p.client);
        out.push(("nbd_raw", name.clone(), raw));
    }
    for (name, b) in sessions {
        out.push(("nbd_session", name, b));
    }
    // nbd_raw: a few handshakes that end early.
    out.push(("nbd_raw", "abort.bin".into(), {
        let mut c = vec![0, 0, 0, 0, 3];
        c.extend_from_slice(&row_nbd::proto::IHAVEOPT.to_be_bytes());
        c.extend_from_slice(&row_nbd::proto::OPT_ABORT.to_be_bytes());
        c.extend_from_slice(&0u32.to_be_bytes());
        c
    }));
    out.push(("nbd_raw", "bad_flags.bin".into(), vec![0, 0xff, 0, 0, 0]));

    // Sanity: the record seeds are valid envelopes.
    for (t, _, b) in &out {
        if *t == "records" {
            assert!(
                row_layer::envelope::open(HEADER, b).is_ok()
                    || row_layer::envelope::open(EPOCH, b).is_ok()
                    || row_layer::envelope::open(HEADER_ENTRY, b).is_ok()
            );
        }
    }
    out
}

/// The version selector (`records::version_for`) under which a sample
/// payload decodes: the current version, else the oldest readable one (an
/// epoch record without moved grains is still written as format 1).
fn seed_version(kind: Kind, payload: &[u8]) -> u8 {
    let rt = kind.record_type();
    if kind.decodes(&crate::records::envelope(rt, rt.current_version, payload)) {
        0
    } else {
        0xf7
    }
}

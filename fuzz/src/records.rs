//! Record decoders past the crc: valid envelopes around fuzzed payloads,
//! real encoded records to mutate, and what every decode must satisfy.

use bytes::Bytes;
use roaring::RoaringTreemap;
use row_layer::backend::Action;
use row_layer::envelope::RecordType;
use row_layer::header_format::{self, HeaderEntry, StoredHeader, HEADER_ENTRY};
use row_layer::records::{
    BookmarkRecord, EpochDelta, EpochMeta, EpochState, HeaderRecord, ParentLink, SnapRecord,
    Timestamp, EPOCH, HEADER,
};
use row_layer::{Epoch, ErrorKind, ImageId, SnapId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A record version above the supported range must be reported as
/// `ErrorKind::Unsupported` ("upgrade rbd-row"), never as `Corrupt`; older
/// unreadable versions are `Corrupt`. Either way the message names the
/// version.
pub const REQUIRE_UNSUPPORTED_KIND: bool = true;

/// Which record a fuzz input is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `RRHD`, [`HeaderRecord`].
    Header,
    /// `RREP`, [`EpochDelta`].
    Epoch,
    /// `RRHE`, one [`HeaderEntry`] of a format-2 header.
    Entry,
}

impl Kind {
    /// The envelope parameters of this record type.
    pub fn record_type(self) -> RecordType {
        match self {
            Kind::Header => HEADER,
            Kind::Epoch => EPOCH,
            Kind::Entry => HEADER_ENTRY,
        }
    }
    /// The other record type (same layout, different magic).
    pub fn other(self) -> Kind {
        match self {
            Kind::Header => Kind::Epoch,
            Kind::Epoch => Kind::Entry,
            Kind::Entry => Kind::Header,
        }
    }
    /// The kind a selector byte picks.
    pub fn from_selector(sel: u8) -> Kind {
        match sel % 3 {
            0 => Kind::Header,
            1 => Kind::Epoch,
            _ => Kind::Entry,
        }
    }
    /// Whether `bytes` decode as a record of this kind at all.
    pub fn decodes(self, bytes: &[u8]) -> bool {
        match self {
            Kind::Header => StoredHeader::decode(bytes).is_ok(),
            Kind::Epoch => EpochDelta::decode(bytes, &ImageId("x".into()), Epoch(1)).is_ok(),
            Kind::Entry => row_layer::envelope::decode::<HeaderEntry>(HEADER_ENTRY, bytes).is_ok(),
        }
    }
}

/// A correctly framed record: `magic | version (u16 le) | len (u32 le) |
/// payload | crc32c (u32 le)` over everything before the crc, exactly as
/// `row_layer::envelope::encode` writes it, but with any version.
pub fn envelope(rt: RecordType, version: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 2 + 4 + payload.len() + 4);
    out.extend_from_slice(&rt.magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The payload of an encoded record (panics if `bytes` is not a valid
/// envelope of `rt`: only used on records this build just encoded).
pub fn payload_of(rt: RecordType, bytes: &[u8]) -> Vec<u8> {
    let (_, p) = row_layer::envelope::open(rt, bytes).expect("own encoding opens");
    p.to_vec()
}

/// Field-for-field copy of row-layer's private `EpochWire` (postcard is not
/// self-describing, so equal field order and types give the same bytes).
/// Used to learn which image/epoch a fuzzed epoch record claims to be, so
/// that `EpochDelta::decode`'s identity check does not stop every input.
#[derive(Debug, Serialize, Deserialize)]
pub struct EpochWireMirror {
    /// Image the record belongs to.
    pub image: ImageId,
    /// Its epoch.
    pub epoch: Epoch,
    /// Parent epoch.
    pub parent: Option<Epoch>,
    /// Serialized `touched` treemap.
    pub touched: Vec<u8>,
    /// Serialized `data` treemap.
    pub data: Vec<u8>,
    /// Serialized `zero` treemap.
    pub zero: Vec<u8>,
    /// Serialized `reclaimed` treemap.
    pub reclaimed: Vec<u8>,
}

/// Field-for-field copy of row-layer's private `EpochWireV2` (format 2).
#[derive(Debug, Serialize, Deserialize)]
pub struct EpochWireV2Mirror {
    /// The format-1 fields.
    pub v1: EpochWireMirror,
    /// Serialized `moved` treemap.
    pub moved: Vec<u8>,
}

fn ts(secs: u64, nanos: u32) -> Timestamp {
    Timestamp { secs, nanos }
}

fn meta(parent: Option<u64>, open: bool) -> EpochMeta {
    EpochMeta {
        parent: parent.map(Epoch),
        state: if open {
            EpochState::Open
        } else {
            EpochState::Sealed
        },
    }
}

fn snap(id: u64, name: &str, epoch: u64, size: u64, overlap: Option<u64>) -> SnapRecord {
    SnapRecord {
        id: SnapId(id),
        name: name.into(),
        epoch: Epoch(epoch),
        size,
        created: ts(1_790_000_000 + id, id as u32),
        protected: id % 2 == 0,
        parent_overlap: overlap,
    }
}

/// Headers as the engine writes them: a fresh image, a clone with a
/// snapshot and a bookmark, and an image with many snapshots, hidden and
/// garbage epochs, a branch (after a rollback) and a shrink.
pub fn sample_headers() -> Vec<HeaderRecord> {
    let fresh = HeaderRecord {
        id: ImageId("0000000000000001".into()),
        name: "disk".into(),
        size: 1 << 30,
        object_size: 4 << 20,
        grain_size: 4096,
        created: ts(1_790_000_000, 0),
        head: Epoch(1),
        next_epoch: 2,
        next_snap: 1,
        epochs: BTreeMap::from([(Epoch(1), meta(None, true))]),
        garbage: vec![],
        head_truncated: None,
        snapshots: vec![],
        bookmarks: vec![],
        parent: None,
        removing: false,
        commit_seq: 0,
    };

    let clone = HeaderRecord {
        id: ImageId("00c0ffee12345678".into()),
        name: "vm-disk-1".into(),
        size: 10 << 30,
        object_size: 4 << 20,
        grain_size: 4096,
        created: ts(1_790_000_000, 123),
        head: Epoch(4),
        next_epoch: 5,
        next_snap: 3,
        epochs: BTreeMap::from([
            (Epoch(1), meta(None, false)),
            (Epoch(3), meta(Some(1), false)),
            (Epoch(4), meta(Some(3), true)),
        ]),
        garbage: vec![Epoch(2)],
        head_truncated: Some((100, 200)),
        snapshots: vec![snap(2, "nightly", 3, 10 << 30, Some(1 << 30))],
        bookmarks: vec![BookmarkRecord {
            name: "backup-17".into(),
            epoch: Epoch(1),
            size: 8 << 30,
            created: ts(1_790_000_050, 7),
        }],
        parent: Some(ParentLink {
            image: ImageId("0badcafe00000001".into()),
            snap: SnapId(9),
            epoch: Epoch(12),
            overlap: 1 << 30,
        }),
        removing: false,
        commit_seq: 0,
    };

    // Epochs 1..=9 sealed in a chain with a branch at 5 (rollback to the
    // snapshot pinning 5 made 8 a child of 5), head 12 on top of 9; 6 and
    // 10 are garbage; 7 is hidden (its snapshot was removed).
    let mut epochs = BTreeMap::new();
    epochs.insert(Epoch(1), meta(None, false));
    for e in 2..=5u64 {
        epochs.insert(Epoch(e), meta(Some(e - 1), false));
    }
    epochs.insert(Epoch(7), meta(Some(5), false));
    epochs.insert(Epoch(8), meta(Some(5), false));
    epochs.insert(Epoch(9), meta(Some(8), false));
    epochs.insert(Epoch(12), meta(Some(9), true));
    let many = HeaderRecord {
        id: ImageId("1234567890abcdef".into()),
        name: "many-snaps".into(),
        size: 3 << 20,
        object_size: 64 << 10,
        grain_size: 16 << 10,
        created: ts(1_790_001_000, 999_999_999),
        head: Epoch(12),
        next_epoch: 13,
        next_snap: 11,
        epochs,
        garbage: vec![Epoch(6), Epoch(10)],
        head_truncated: Some((128, 256)),
        snapshots: vec![
            snap(1, "s1", 1, 4 << 20, None),
            snap(2, "s2", 2, 4 << 20, None),
            snap(3, "s3", 3, 4 << 20, None),
            snap(4, "before-rollback", 4, 4 << 20, None),
            snap(5, "golden", 5, 4 << 20, None),
            snap(8, "after-rollback", 8, 4 << 20, None),
            snap(10, "pre-shrink \u{e9}t\u{e9}", 9, 4 << 20, None),
        ],
        bookmarks: vec![
            BookmarkRecord {
                name: "removed-s7".into(),
                epoch: Epoch(7),
                size: 4 << 20,
                created: ts(1_790_001_007, 7),
            },
            BookmarkRecord {
                name: "b2".into(),
                epoch: Epoch(2),
                size: 4 << 20,
                created: ts(1_790_001_002, 2),
            },
        ],
        parent: None,
        removing: true,
        commit_seq: 0,
    };
    vec![fresh, clone, many]
}

/// Epoch records: empty, small arrays, a dense bitmap container, long
/// runs, several 2^32-grain buckets, and a bookmarked epoch with reclaimed
/// grains.
pub fn sample_deltas() -> Vec<(ImageId, Epoch, Option<Epoch>, EpochDelta)> {
    let mut out = Vec::new();
    out.push((
        ImageId("0000000000000001".into()),
        Epoch(1),
        None,
        EpochDelta::default(),
    ));

    let mut d = EpochDelta::default();
    d.touched.insert_range(0..3);
    d.touched.insert(1 << 20);
    d.data.insert_range(0..1500);
    d.data.insert(1u64 << 30);
    d.zero.insert_range(2000..2048);
    d.reclaimed.insert(7);
    out.push((
        ImageId("00c0ffee12345678".into()),
        Epoch(3),
        Some(Epoch(1)),
        d,
    ));

    let mut d = EpochDelta::default();
    // Every third grain of the first 64 Ki: a bitmap container (> 4096 values,
    // not run-friendly).
    for g in (0..65536u64).step_by(3) {
        d.data.insert(g);
    }
    // Scattered values: array containers.
    for g in [70_000u64, 70_017, 99_999, 1 << 33, (1 << 33) + 5] {
        d.data.insert(g);
    }
    d.zero.insert_range(200_000..300_000);
    d.zero.insert_range((5u64 << 32)..(5u64 << 32) + 10);
    d.touched.insert_range(0..17);
    d.touched.insert(u64::MAX >> 20);
    for g in (0..65536u64).step_by(3).take(40) {
        d.reclaimed.insert(g);
    }
    out.push((
        ImageId("1234567890abcdef".into()),
        Epoch(9),
        Some(Epoch(8)),
        d.clone(),
    ));

    // Format 2: moved grains (defragmentation's copies), a subset of data.
    for g in (0..65536u64).step_by(6) {
        d.moved.insert(g);
    }
    d.moved.insert(1 << 33);
    out.push((
        ImageId("1234567890abcdef".into()),
        Epoch(10),
        Some(Epoch(9)),
        d,
    ));
    out
}

/// A header as a new image stores it (format 2): the payload and the
/// entries, sorted by key.
pub fn encode_header(h: &HeaderRecord) -> (Vec<u8>, Vec<(String, Bytes)>) {
    let mut h = h.clone();
    let (mut payload, mut entries) = (Vec::new(), Vec::new());
    for a in header_format::commit_actions(&mut h, None).expect("sample header encodes") {
        match a {
            Action::WriteFull(b) => payload = b.to_vec(),
            Action::OmapSet(kv) => entries.extend(kv),
            _ => {}
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    (payload, entries)
}

/// The stored entries of the sample header with id `id` (none if no sample
/// has it), so that fuzzed payloads of samples are assembled for real.
fn sample_entries(id: &ImageId) -> Vec<(String, Bytes)> {
    sample_headers()
        .iter()
        .find(|h| &h.id == id)
        .map(|h| encode_header(h).1)
        .unwrap_or_default()
}

/// Encoded payloads of every sample (header samples first).
pub fn sample_payloads() -> Vec<(Kind, Vec<u8>)> {
    let mut out = Vec::new();
    for h in sample_headers() {
        let (bytes, entries) = encode_header(&h);
        out.push((Kind::Header, payload_of(HEADER, &bytes)));
        for (_, v) in entries {
            out.push((Kind::Entry, payload_of(HEADER_ENTRY, &v)));
        }
    }
    for (id, e, p, d) in sample_deltas() {
        let bytes = d.encode(&id, e, p).expect("sample epoch encodes");
        // The mirror must match the real wire format, or the epoch checks
        // would stop at the identity check.
        let m: EpochWireMirror = postcard::from_bytes(&payload_of(EPOCH, &bytes))
            .expect("EpochWireMirror is out of date with row-layer's EpochWire");
        assert_eq!((m.image, m.epoch, m.parent), (id, e, p), "mirror fields");
        out.push((Kind::Epoch, payload_of(EPOCH, &bytes)));
    }
    out
}

fn assert_decode_error(e: &row_layer::Error, what: &str) {
    assert!(
        matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported),
        "{what}: decode failed with kind {:?} (only Corrupt/Unsupported are \
         allowed for bytes read from the store): {e}",
        e.kind()
    );
}

/// `h` without what storage does not keep: the commit number, and the
/// order of snapshots (by id) and bookmarks (by creation).
fn normalized(mut h: HeaderRecord) -> HeaderRecord {
    h.commit_seq = 0;
    h.snapshots.sort_by_key(|s| s.id);
    h.bookmarks
        .sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    h
}

/// Decodes `bytes` as a header payload (format 1 whole; format 2 assembled
/// with the entries of the sample it came from, if any). Whatever decodes
/// must store and decode to the same value, and storing is a function of
/// the value.
pub fn check_header(bytes: &[u8]) -> Option<HeaderRecord> {
    let decoded = StoredHeader::decode(bytes).and_then(|s| match s {
        StoredHeader::Whole(h) => Ok(h),
        StoredHeader::Split(core) => {
            let entries = sample_entries(core.id());
            core.assemble(&entries)
        }
    });
    match decoded {
        Ok(h) => {
            let back = header_format::round_trip(&h).expect("a decoded header stores again");
            assert_eq!(
                normalized(back.clone()),
                normalized(h.clone()),
                "header round trip"
            );
            assert_eq!(
                encode_header(&back),
                encode_header(&h),
                "header encoding is canonical"
            );
            Some(h)
        }
        Err(e) => {
            assert_decode_error(&e, "header");
            None
        }
    }
}

/// Decodes `bytes` as a header entry: it must decode under its own key
/// only, and re-encode to a record that decodes to the same entry.
pub fn check_entry(bytes: &[u8]) -> Option<HeaderEntry> {
    match row_layer::envelope::decode::<HeaderEntry>(HEADER_ENTRY, bytes) {
        Ok(entry) => {
            let key = entry.key();
            assert_eq!(HeaderEntry::decode(&key, bytes).expect("own key"), entry);
            let e = HeaderEntry::decode(&format!("{key}x"), bytes).expect_err("other key");
            assert_decode_error(&e, "entry key");
            let again = entry.encode().expect("re-encode");
            assert_eq!(HeaderEntry::decode(&key, &again).expect("re-decode"), entry);
            Some(entry)
        }
        Err(e) => {
            assert_decode_error(&e, "entry");
            None
        }
    }
}

/// Decodes `bytes` as an epoch record, as the image and epoch it claims to
/// be (learned through [`EpochWireMirror`]), and checks the round trip, the
/// identity check and the bitmaps against a direct decode.
pub fn check_epoch(bytes: &[u8]) -> Option<EpochDelta> {
    let opened = row_layer::envelope::open(EPOCH, bytes).ok();
    let mirror = opened.and_then(|(_, p)| postcard::from_bytes::<EpochWireMirror>(p).ok());
    // Format 2 appends the moved grains to format 1's fields.
    let moved_raw = opened
        .filter(|(v, _)| *v == 2)
        .and_then(|(_, p)| postcard::from_bytes::<EpochWireV2Mirror>(p).ok())
        .map(|m| m.moved);
    let Some(m) = mirror else {
        let e = EpochDelta::decode(bytes, &ImageId("fuzz".into()), Epoch(1))
            .expect_err("an epoch record whose payload does not decode is refused");
        assert_decode_error(&e, "epoch");
        return None;
    };
    match EpochDelta::decode(bytes, &m.image, m.epoch) {
        Ok(d) => {
            // The bitmaps are exactly what the payload serializes.
            for (got, raw, what) in [
                (&d.touched, &m.touched, "touched"),
                (&d.data, &m.data, "data"),
                (&d.zero, &m.zero, "zero"),
                (&d.reclaimed, &m.reclaimed, "reclaimed"),
            ] {
                let direct = RoaringTreemap::deserialize_from(&raw[..]).expect("bitmap decodes");
                assert_eq!(got, &direct, "{what} bitmap");
            }
            match &moved_raw {
                Some(raw) => {
                    let direct = RoaringTreemap::deserialize_from(&raw[..]).expect("moved decodes");
                    assert_eq!(d.moved, direct, "moved bitmap");
                }
                None => assert!(d.moved.is_empty(), "format 1 has no moved grain"),
            }
            assert!(d.moved.is_subset(&d.data), "moved grains are data grains");
            assert!(d.data.is_disjoint(&d.zero), "data and zero disjoint");
            // Identity: the same bytes are refused as another epoch/image.
            let other = Epoch(m.epoch.0.wrapping_add(1));
            let e = EpochDelta::decode(bytes, &m.image, other)
                .expect_err("epoch record accepted for another epoch");
            assert_decode_error(&e, "epoch identity");
            let e = EpochDelta::decode(bytes, &ImageId(format!("{}x", m.image)), m.epoch)
                .expect_err("epoch record accepted for another image");
            assert_decode_error(&e, "epoch identity");

            let again = d
                .encode(&m.image, m.epoch, m.parent)
                .expect("a decoded epoch record re-encodes");
            let back =
                EpochDelta::decode(&again, &m.image, m.epoch).expect("re-encoded epoch decodes");
            assert_eq!(back, d, "epoch round trip");
            assert_eq!(
                back.encode(&m.image, m.epoch, m.parent).expect("encode"),
                again,
                "epoch encoding is canonical"
            );
            Some(d)
        }
        Err(e) => {
            assert_decode_error(&e, "epoch");
            None
        }
    }
}

/// Decodes `bytes` as `kind`.
pub fn check(kind: Kind, bytes: &[u8]) -> bool {
    match kind {
        Kind::Header => check_header(bytes).is_some(),
        Kind::Epoch => check_epoch(bytes).is_some(),
        Kind::Entry => check_entry(bytes).is_some(),
    }
}

/// A record of `kind` whose version is outside the readable range must be
/// refused whatever its payload, as a version problem (not as damage that
/// happens to mention nothing).
pub fn check_version_refused(kind: Kind, version: u16, payload: &[u8]) {
    let rt = kind.record_type();
    assert!(version < rt.oldest_readable || version > rt.current_version);
    let bytes = envelope(rt, version, payload);
    let err = match kind {
        Kind::Header => StoredHeader::decode(&bytes).map(|_| ()),
        Kind::Epoch => EpochDelta::decode(&bytes, &ImageId("x".into()), Epoch(1)).map(|_| ()),
        Kind::Entry => row_layer::envelope::decode::<HeaderEntry>(HEADER_ENTRY, &bytes).map(|_| ()),
    }
    .expect_err("a record version outside the readable range is refused");
    if REQUIRE_UNSUPPORTED_KIND && version > rt.current_version {
        assert_eq!(err.kind(), ErrorKind::Unsupported, "newer version: {err}");
    } else {
        assert_decode_error(&err, "version");
    }
    assert!(
        err.message().contains("version"),
        "a refused version is reported as such: {err}"
    );
}

/// Applies fuzzer-chosen edits to `payload`. `edits` is read 4 bytes at a
/// time: `op, pos_hi, pos_lo, val` (positions wrap around the current
/// length); at most 64 edits.
pub fn apply_edits(payload: &mut Vec<u8>, edits: &[u8]) {
    for e in edits.chunks_exact(4).take(64) {
        let (op, val) = (e[0], e[3]);
        let pos_raw = usize::from(u16::from_be_bytes([e[1], e[2]]));
        let len = payload.len();
        let pos = if len == 0 { 0 } else { pos_raw % len };
        match op % 9 {
            // Overwrite one byte.
            0 if len > 0 => payload[pos] = val,
            // Flip one bit.
            1 if len > 0 => payload[pos] ^= 1 << (val % 8),
            // Insert one byte.
            2 => payload.insert(pos_raw % (len + 1), val),
            // Delete one byte.
            3 if len > 0 => {
                payload.remove(pos);
            }
            // Delete a run.
            4 if len > 0 => {
                let end = (pos + usize::from(val % 32) + 1).min(len);
                payload.drain(pos..end);
            }
            // Duplicate a run in place (repeated containers, list entries).
            5 if len > 0 => {
                let end = (pos + usize::from(val) + 1).min(len);
                let run: Vec<u8> = payload[pos..end].to_vec();
                payload.splice(pos..pos, run);
            }
            // Overwrite up to 8 bytes with a fill (0x00, 0xff, 0x7f, 0x80...).
            6 if len > 0 => {
                let end = (pos + usize::from(val >> 5) + 1).min(len);
                let fill = [0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe, 0x3f, 0x40][usize::from(val & 7)];
                payload[pos..end].fill(fill);
            }
            // Truncate.
            7 => payload.truncate(pos),
            // Add or subtract a small amount (varint lengths, counts, epochs).
            8 if len > 0 => payload[pos] = payload[pos].wrapping_add(val),
            _ => {}
        }
        // Keep memory bounded: payloads only grow by duplication.
        payload.truncate(1 << 20);
    }
}

/// The version byte of the structured targets: most values mean the
/// current version, a few pick versions outside the readable range.
pub fn version_for(rt: RecordType, sel: u8) -> u16 {
    match sel {
        0xf8 => 0,
        0xf9 => rt.oldest_readable.wrapping_sub(1),
        0xfa => rt.current_version + 1,
        0xfb => rt.current_version + 2,
        0xfc => 0x0100,
        0xfd => 0x8000,
        0xfe => u16::MAX - 1,
        0xff => u16::MAX,
        0xf7 => rt.oldest_readable,
        _ => rt.current_version,
    }
}

/// Whether `version` is readable by this build.
pub fn readable(rt: RecordType, version: u16) -> bool {
    (rt.oldest_readable..=rt.current_version).contains(&version)
}

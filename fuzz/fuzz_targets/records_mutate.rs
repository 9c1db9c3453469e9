//! Edits INSIDE real encoded records: start from a header or epoch record
//! this build encodes (several snapshots, bookmarks, a clone link, garbage
//! and hidden epochs; epoch bitmaps with array, bitmap and run containers),
//! apply fuzzer-chosen byte edits to the payload, re-frame it with a correct
//! length and crc32c, and decode.
//!
//! Input: `sample selector | version selector | edits (4 bytes each: op,
//! position hi, position lo, value)`. Same assertions as `records_envelope`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbd_row_fuzz::records::{
    apply_edits, check, check_version_refused, envelope, readable, sample_payloads, version_for,
    Kind,
};
use std::sync::OnceLock;

static SAMPLES: OnceLock<Vec<(Kind, Vec<u8>)>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let samples = SAMPLES.get_or_init(sample_payloads);
    let [sel, ver, edits @ ..] = data else {
        return;
    };
    let (kind, base) = &samples[usize::from(*sel) % samples.len()];
    let mut payload = base.clone();
    apply_edits(&mut payload, edits);
    let rt = kind.record_type();
    let version = version_for(rt, *ver);
    if readable(rt, version) {
        check(*kind, &envelope(rt, version, &payload));
    } else {
        check_version_refused(*kind, version, &payload);
    }
});

//! Arbitrary payloads inside a VALID envelope (magic, version, length and
//! crc32c all correct), so every input reaches postcard decoding and the
//! header/epoch validation instead of stopping at the crc.
//!
//! Input: `kind (bit 0: header/epoch) | version selector | payload...`.
//! Asserts: no panic; a failed decode is `Corrupt` (or `Unsupported`);
//! whatever decodes re-encodes and decodes to the same value, canonically;
//! an epoch record is refused for any other image/epoch; the same payload
//! under the other record type's magic is refused; a version outside the
//! readable range is refused as a version error whatever the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbd_row_fuzz::records::{check, check_version_refused, envelope, readable, version_for, Kind};

fuzz_target!(|data: &[u8]| {
    let [sel, ver, payload @ ..] = data else {
        return;
    };
    let kind = Kind::from_selector(*sel);
    let rt = kind.record_type();
    let version = version_for(rt, *ver);
    if !readable(rt, version) {
        check_version_refused(kind, version, payload);
        return;
    }
    let bytes = envelope(rt, version, payload);
    check(kind, &bytes);
    // A header can never be read as an epoch record, nor the reverse.
    let other = kind.other();
    let wrong = envelope(other.record_type(), version, payload);
    let swapped = kind.decodes(&wrong);
    assert!(!swapped, "record decoded under the other type's magic");
    // Every version outside the range is refused for this payload too.
    check_version_refused(kind, rt.current_version + 1, payload);
});

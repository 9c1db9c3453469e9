//! Arbitrary bytes into the diff reader, validate_diff and merge_diffs:
//! must never panic, only return errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbd_streams::{merge_diffs, validate_diff, DiffReader, DiffRecord};

fuzz_target!(|data: &[u8]| {
    let _ = validate_diff(data);

    // Record-by-record, reading payloads in odd-sized chunks.
    if let Ok(mut r) = DiffReader::new(data) {
        let mut buf = [0u8; 7];
        while let Ok(Some(rec)) = r.next_record() {
            if let DiffRecord::Data { .. } = rec {
                // Read part of the payload; the rest is skipped by next_record.
                let _ = r.read_data(&mut buf);
            }
        }
    }

    // Split the input in two and merge the halves.
    if data.len() >= 2 {
        let cut = data[0] as usize % data.len();
        let (a, b) = data[1..].split_at(cut.min(data.len() - 1));
        let _ = merge_diffs(a, b, std::io::sink());
    }
});

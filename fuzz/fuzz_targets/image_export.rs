//! Arbitrary bytes into the export-format-2 reader: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbd_streams::{validate_image_export, ImageExportReader};

fuzz_target!(|data: &[u8]| {
    let _ = validate_image_export(data);

    if let Ok(mut r) = ImageExportReader::new(data) {
        let _ = r.header();
        while let Ok(Some(mut d)) = r.next_diff() {
            let mut sink = Vec::new();
            let mut ok = true;
            while ok {
                match d.next_record() {
                    Ok(Some(rbd_streams::DiffRecord::Data { .. })) => {
                        ok = d.copy_data_to(&mut sink).is_ok();
                        sink.clear();
                    }
                    Ok(Some(rbd_streams::DiffRecord::End)) | Ok(None) | Err(_) => break,
                    Ok(Some(_)) => {}
                }
            }
            if !ok {
                break;
            }
        }
    }
});

//! Arbitrary bytes as row-layer's on-disk records (image header payload,
//! header entry, sealed epoch record): decoding must refuse damage with an error, never panic or
//! allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbd_row_fuzz::records::{check_entry, check_header};
use row_layer::records::EpochDelta;
use row_layer::{Epoch, ImageId};

fuzz_target!(|data: &[u8]| {
    // Whatever decodes must store again and decode to the same value.
    check_header(data);
    check_entry(data);
    let id = ImageId("fuzz".into());
    let _ = EpochDelta::decode(data, &id, Epoch(1));
});

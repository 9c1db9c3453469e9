//! Arbitrary bytes as row-layer's on-disk records (image header, sealed
//! epoch record): decoding must refuse damage with an error, never panic or
//! allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use row_layer::records::{EpochDelta, HeaderRecord};
use row_layer::{Epoch, ImageId};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = HeaderRecord::decode(data) {
        // Whatever decodes must re-encode and decode to the same value.
        let again = h.encode().expect("re-encode");
        assert_eq!(HeaderRecord::decode(&again).expect("re-decode"), h);
    }
    let id = ImageId("fuzz".into());
    let _ = EpochDelta::decode(data, &id, Epoch(1));
});

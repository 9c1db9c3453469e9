//! The head checkpoint decoder (`RRCK`, row-layer/src/ckpt_record.rs) on
//! hostile bytes: raw, or an arbitrary payload inside a valid envelope (so
//! every input reaches postcard and the record's own checks), decoded as
//! the image and epoch the payload claims to be.
//!
//! Input: `mode (bit 0: raw / enveloped) | version selector (enveloped
//! only; `records::version_for`) | bytes...`.
//! Asserts: no panic; a failed decode is `Corrupt` (or `Unsupported` for a
//! newer version); whatever decodes has generation ≥ 1 and no grain both
//! data and zero, and re-encodes to a record that decodes to the same
//! value; it is refused for any other epoch, and never read as an epoch
//! record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbd_row_fuzz::records::{envelope, version_for};
use row_layer::ckpt_record::{HeadCheckpoint, CHECKPOINT};
use row_layer::{Epoch, ErrorKind, ImageId};
use serde::Deserialize;

/// The first two fields of the record's payload (postcard is not
/// self-describing: same order and types, same bytes).
#[derive(Deserialize)]
struct Identity {
    image: ImageId,
    epoch: Epoch,
}

fn identity(bytes: &[u8]) -> (ImageId, Epoch) {
    let payload = bytes.get(10..).unwrap_or_default();
    match postcard::take_from_bytes::<Identity>(payload) {
        Ok((i, _)) => (i.image, i.epoch),
        Err(_) => (ImageId("x".into()), Epoch(1)),
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let bytes = match rest {
        _ if mode & 1 == 0 => rest.to_vec(),
        [ver, payload @ ..] => envelope(CHECKPOINT, version_for(CHECKPOINT, *ver), payload),
        [] => return,
    };
    let (image, epoch) = identity(&bytes);
    match HeadCheckpoint::decode(&bytes, &image, epoch) {
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported),
            "unexpected error kind: {e}"
        ),
        Ok(c) => {
            assert!(c.generation >= 1);
            assert!(c.delta.data.is_disjoint(&c.delta.zero));
            let again = c.encode(&image, epoch).expect("re-encode");
            let back = HeadCheckpoint::decode(&again, &image, epoch).expect("decode own encoding");
            assert_eq!(back, c);
            let other = Epoch(epoch.0.wrapping_add(1));
            let e = HeadCheckpoint::decode(&bytes, &image, other).expect_err("other epoch");
            assert_eq!(e.kind(), ErrorKind::Corrupt);
            assert!(row_layer::records::EpochDelta::decode(&bytes, &image, epoch).is_err());
        }
    }
});

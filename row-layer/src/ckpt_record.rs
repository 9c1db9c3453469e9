//! The head checkpoint record: the open epoch's delta as of a registration
//! generation, so that open needs the grain omaps only of the objects
//! registered since (DESIGN §6, "Head checkpoints").
//!
//! Stored whole (one `write_full`) in `rbd_row_ckpt.<id>.<epoch>`, in the
//! versioned envelope under its own magic, `RRCK`, so that it can never be
//! read as a header or an epoch record. Version 1 is kept as a fixture in
//! `tests/fixtures/ckpt_v1.bin`.

use crate::envelope::RecordType;
use crate::error::{Error, Result};
use crate::ids::{Epoch, ImageId};
use crate::records::{bitmap_bytes, bitmap_from, decode_with_moved, encode_with_moved, EpochDelta};
use serde::{Deserialize, Serialize};

/// Checkpoint record type. Version 2 adds `moved` (defrag.rs); a
/// checkpoint with no moved grain is still written as version 1.
pub const CHECKPOINT: RecordType = RecordType {
    magic: *b"RRCK",
    current_version: 2,
    oldest_readable: 1,
};

/// The open epoch's delta as of the start of registration generation
/// `generation`: it holds every data op registered under an earlier
/// generation. Objects registered under `generation` or later carry touch
/// keys of those generations and are read from their grain omaps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeadCheckpoint {
    /// The first generation the checkpoint does not cover (≥ 1).
    pub generation: u64,
    /// `touched`, `data`, `zero` and `moved` of the open epoch
    /// (`reclaimed` is empty: the reclaimer never touches the head).
    pub delta: EpochDelta,
}

#[derive(Serialize, Deserialize)]
struct CheckpointWire {
    image: ImageId,
    epoch: Epoch,
    generation: u64,
    touched: Vec<u8>,
    data: Vec<u8>,
    zero: Vec<u8>,
}

impl HeadCheckpoint {
    /// Encodes the checkpoint of open epoch `epoch` of `image`.
    pub fn encode(&self, image: &ImageId, epoch: Epoch) -> Result<Vec<u8>> {
        Self::encode_delta(self.generation, &self.delta, image, epoch)
    }

    /// Encodes `delta` as the checkpoint `generation` of `epoch` of `image`
    /// (without copying it into a `HeadCheckpoint` first).
    pub fn encode_delta(
        generation: u64,
        delta: &EpochDelta,
        image: &ImageId,
        epoch: Epoch,
    ) -> Result<Vec<u8>> {
        let mut touched = delta.touched.clone();
        let mut data = delta.data.clone();
        let mut zero = delta.zero.clone();
        touched.optimize();
        data.optimize();
        zero.optimize();
        let v1 = CheckpointWire {
            image: image.clone(),
            epoch,
            generation,
            touched: bitmap_bytes(&touched)?,
            data: bitmap_bytes(&data)?,
            zero: bitmap_bytes(&zero)?,
        };
        encode_with_moved(CHECKPOINT, v1, &delta.moved)
    }

    /// Decodes the checkpoint of `epoch` of `image`, checking that it is
    /// that one and that it is self-consistent.
    pub fn decode(bytes: &[u8], image: &ImageId, epoch: Epoch) -> Result<Self> {
        let (w, moved): (CheckpointWire, _) = decode_with_moved(CHECKPOINT, bytes)?;
        let what = format!("checkpoint record {image}/{epoch}");
        if &w.image != image || w.epoch != epoch {
            return Err(Error::corrupt(format!(
                "checkpoint record for {}/{} found where {image}/{epoch} was expected",
                w.image, w.epoch
            )));
        }
        if w.generation == 0 {
            return Err(Error::corrupt(format!("{what}: generation 0")));
        }
        let delta = EpochDelta {
            touched: bitmap_from(&w.touched, "touched")?,
            data: bitmap_from(&w.data, "data")?,
            zero: bitmap_from(&w.zero, "zero")?,
            reclaimed: Default::default(),
            moved,
        };
        delta.check_consistent(&what)?;
        Ok(HeadCheckpoint {
            generation: w.generation,
            delta,
        })
    }
}

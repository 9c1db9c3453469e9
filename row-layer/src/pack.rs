//! The record pack: copies of sealed epoch records in the header's omap.
//!
//! Open needs the record of every sealed epoch. One object per record made
//! that one read per epoch: 2.4 s at 10,000 snapshots on RADOS (issue 9,
//! target 1 s). The owner therefore copies each sealed record, byte for
//! byte (the `RREP` envelope with its version and crc32c), into a
//! `pack.<epoch %016x>` entry of the header object, in the background, and
//! open lists those entries (one omap page per 1024) instead of reading
//! the objects.
//!
//! Rules that keep a copy never wrong:
//! - The record object stays the authority; an entry is only ever equal to
//!   it. A reader that finds no entry, or one that does not decode for its
//!   epoch, reads the object.
//! - Only the owner writes entries, in header ops guarded by its cookie, on
//!   its control task, so a pack never races a record rewrite.
//! - Before a record is rewritten (merge, punch, flatten) its entry is
//!   removed and that removal flushed; only then is the object rewritten.
//! - The packer flushes before it copies, so it copies only durable bytes.
//! - A garbage epoch's entry goes in the header commit that forgets it.
//! - Records over [`PACK_MAX_RECORD`] stay objects only.

use crate::backend::ext::BackendExt;
use crate::backend::{Action, Backend};
use crate::control::Pacer;
use crate::error::Result;
use crate::ids::{Epoch, ImageId};
use crate::image::Image;
use crate::layout;
use crate::records::EpochState;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet};

/// Prefix of the pack entries in the header object's omap.
pub const PACK_PREFIX: &str = "pack.";
/// Records larger than this are not packed (an omap value should stay small).
pub const PACK_MAX_RECORD: usize = 64 * 1024;
/// Entries per header op of the packer.
pub(crate) const PACK_BATCH: usize = 256;
/// Record reads the packer has in flight.
const PACK_PARALLELISM: usize = 32;

/// The pack entry key of epoch `e`.
pub fn pack_key(e: Epoch) -> String {
    format!("{PACK_PREFIX}{:016x}", e.0)
}

/// The epoch a pack entry key names.
pub fn parse_pack_key(key: &str) -> Result<Epoch> {
    let bad = || crate::error::Error::corrupt(format!("bad pack key {key:?}"));
    let hex = key.strip_prefix(PACK_PREFIX).ok_or_else(bad)?;
    if hex.len() != 16 {
        return Err(bad());
    }
    u64::from_str_radix(hex, 16).map(Epoch).map_err(|_| bad())
}

/// Every pack entry of image `id`, by epoch. Keys that do not parse are
/// skipped (fsck reports them): the record objects are the authority.
pub(crate) async fn list_pack(
    backend: &dyn Backend,
    id: &ImageId,
) -> Result<BTreeMap<Epoch, Bytes>> {
    let entries = backend
        .omap_all(&layout::header_object(id), PACK_PREFIX)
        .await
        .map_err(|e| e.context(format!("listing the record pack of image {id}")))?;
    Ok(entries
        .into_iter()
        .filter_map(|(k, v)| parse_pack_key(&k).ok().map(|e| (e, v)))
        .collect())
}

impl Image {
    /// Removes epoch `e`'s pack entry, durably, before its record object is
    /// rewritten. Nothing when `e` is not packed. Control-task only.
    pub(crate) async fn unpack(&self, e: Epoch) -> Result<()> {
        if !self.state().packed.contains(&e) {
            return Ok(());
        }
        self.owner_header_op(vec![Action::OmapRemove(vec![pack_key(e)])])
            .await
            .map_err(|err| err.context(format!("removing epoch {e}'s pack entry")))?;
        self.inner.backend.flush().await?;
        self.state().packed.remove(&e);
        Ok(())
    }

    /// Sealed epochs whose records are neither packed nor known too large.
    fn unpacked(&self) -> Vec<Epoch> {
        let st = self.state();
        st.header
            .epochs
            .iter()
            .filter(|(e, m)| {
                m.state == EpochState::Sealed
                    && !st.packed.contains(e)
                    && !st.unpackable.contains(e)
            })
            .map(|(e, _)| *e)
            .collect()
    }

    /// Packs the sealed records not packed yet, once at least
    /// `ImageOptions::pack_min_epochs` of them are waiting: a `flush`, one
    /// read per record, and one guarded header op per [`PACK_BATCH`]
    /// entries, each paced like the reclaimer's ops. Control-task only.
    pub(crate) async fn pack_now(&self, pacer: &Pacer) -> Result<()> {
        let min = self.inner.options.pack_min_epochs;
        let todo = self.unpacked();
        if min == 0 || todo.len() < min {
            return Ok(());
        }
        self.inner.backend.flush().await?;
        for batch in todo.chunks(PACK_BATCH) {
            let records = self.read_for_pack(batch, pacer).await?;
            let (fits, large): (Vec<_>, Vec<_>) = records
                .into_iter()
                .partition(|(_, b)| b.len() <= PACK_MAX_RECORD);
            self.state()
                .unpackable
                .extend(large.iter().map(|(e, _)| *e));
            if fits.is_empty() {
                continue;
            }
            let epochs: BTreeSet<Epoch> = fits.iter().map(|(e, _)| *e).collect();
            let set = fits.into_iter().map(|(e, b)| (pack_key(e), b)).collect();
            pacer.op().await;
            self.owner_header_op(vec![Action::OmapSet(set)])
                .await
                .map_err(|err| err.context("writing record pack entries"))?;
            self.state().packed.extend(epochs);
        }
        Ok(())
    }

    /// The record objects of `epochs`, as stored. A record that is gone
    /// (the reclaimer deleted its epoch meanwhile) is left out.
    async fn read_for_pack(&self, epochs: &[Epoch], pacer: &Pacer) -> Result<Vec<(Epoch, Bytes)>> {
        let backend = &self.inner.backend;
        let id = &self.inner.id;
        let read: Vec<Option<(Epoch, Bytes)>> = stream::iter(epochs.iter().copied())
            .map(|e| async move {
                pacer.op().await;
                use crate::backend::ext::NotFoundExt;
                let bytes = backend
                    .read_all(&layout::epoch_object(id, e))
                    .await
                    .or_absent()?;
                Ok::<_, crate::error::Error>(bytes.map(|b| (e, b)))
            })
            .buffered(PACK_PARALLELISM)
            .try_collect()
            .await?;
        Ok(read.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_keys_are_refused() {
        assert_eq!(pack_key(Epoch(0x2a)), "pack.000000000000002a");
        assert_eq!(parse_pack_key(&pack_key(Epoch(7))).unwrap(), Epoch(7));
        for bad in [
            "pack.",
            "pack.2a",
            "pack.zzzzzzzzzzzzzzzz",
            "hdr.0000000000000001",
        ] {
            assert!(parse_pack_key(bad).is_err(), "{bad}");
        }
    }
}

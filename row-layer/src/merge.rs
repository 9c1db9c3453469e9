//! Merging hidden epochs, so that a long history costs no more than its
//! live views.
//!
//! Trimming (reclaim.rs) frees the grains of a hidden epoch that every view
//! below it has rewritten, but the grains some view still reads keep the
//! epoch alive in its own objects. Under rolling snapshots (create n, write,
//! remove n-5: ceph#49837) every removed snapshot leaves such an epoch, so
//! without merging the head's path, the object count and each reclaim pass
//! grow with the history.
//!
//! A hidden epoch `e` whose parent `p` is hidden too, and has no other
//! child, is merged *down* into `p`: its live grains are copied into `p`'s
//! objects, `p`'s record is rewritten to hold both deltas, and `e` is
//! spliced out. Merging down copies each surviving grain version once
//! (into the old, large base), where merging up would copy the base again
//! at every round.
//!
//! It is safe because every view and diff base that reads `p` passes
//! through `e` first (`p` has no other child, no snapshot and no
//! bookmark): while `e` exists nobody reads the grains of `p` that `e`
//! covers, so they can be overwritten, and `p`'s record can name `e`'s
//! grains before their bytes arrive. Order on disk: `p`'s merged record,
//! flush, the copies, flush, then the header commit of the splice (`e`
//! goes to `garbage`). A crash anywhere before the commit leaves `e` in
//! place, shadowing everything it copied, and the merge is done again.
//! The record comes first so that no copy is ever left unnamed: if a merge
//! stops half way and `e` then loses a grain to a trim, the trim of `p`
//! (whose record names the grain) punches `p`'s copy too.
//!
//! Readers that loaded the old map: the owner's own requests hold a token
//! of the current request generation (grace.rs), so once a pass's merges
//! are spliced the reclaimer starts a new generation and waits for the old
//! one (a barrier that holds back no new request) before any merged
//! epoch's objects are deleted; no read can then still use a resolution
//! naming one. Other handles (read-only snapshot views, clones
//! reading this image as their parent) find `e`'s objects gone and reload
//! their map (refresh.rs).

use crate::backend::{Action, WriteOp};
use crate::control::Pacer;
use crate::error::{Error, Result};
use crate::ids::{Epoch, ObjectNo};
use crate::image::{Image, GRAIN_DATA, GRAIN_ZERO};
use crate::layout;
use crate::reclaim::cpu;
use crate::records::{EpochDelta, EpochState, HeaderRecord};
use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use roaring::RoaringTreemap;
use std::collections::{BTreeMap, BTreeSet};

/// Objects merged concurrently.
const MERGE_PARALLELISM: usize = 16;

/// The first hidden epoch that can be merged into its parent: both hidden
/// (sealed, no snapshot, no bookmark) and the parent has no other child.
/// Parents come before children, so a chain of hidden epochs folds into
/// its oldest member one by one.
pub(crate) fn next_merge(h: &HeaderRecord) -> Option<(Epoch, Epoch)> {
    let pinned: BTreeSet<Epoch> = std::iter::once(h.head)
        .chain(h.snapshots.iter().map(|s| s.epoch))
        .chain(h.bookmarks.iter().map(|b| b.epoch))
        .collect();
    let hidden = |e: &Epoch| {
        !pinned.contains(e)
            && h.epochs
                .get(e)
                .is_some_and(|m| m.state == EpochState::Sealed)
    };
    // Children per parent, counted once: O(epochs log epochs) per call,
    // where counting them per candidate made every reclaim pass (one after
    // each snapshot create) quadratic in the number of epochs.
    let mut children: BTreeMap<Epoch, usize> = BTreeMap::new();
    for p in h.epochs.values().filter_map(|m| m.parent) {
        *children.entry(p).or_default() += 1;
    }
    h.epochs.iter().find_map(|(e, m)| {
        let p = m.parent?;
        let only_child = children.get(&p) == Some(&1);
        (hidden(e) && hidden(&p) && only_child).then_some((*e, p))
    })
}

/// `p`'s delta once `e` (its only child) is folded into it.
fn merged_delta(p: &EpochDelta, e: &EpochDelta, written: &RoaringTreemap) -> EpochDelta {
    let mut out = p.clone();
    out.data -= &e.zero;
    out.data |= &e.data;
    out.zero -= &e.data;
    out.zero |= &e.zero;
    out.touched |= written;
    // `p`'s moved grains that `e` changed are `e`'s changes now; `e`'s own
    // moved grains become changes of the merged epoch (a diff across it
    // may list them although they did not change: never the reverse).
    out.moved -= &e.data;
    out.moved -= &e.zero;
    // Grains `e` rewrote hold bytes again; none are listed as freed.
    out.reclaimed -= &e.data;
    out.reclaimed -= &e.zero;
    out
}

impl Image {
    /// Merges every mergeable hidden epoch into its parent. Control-task
    /// only (it runs inside the reclaimer). Returns whether any epoch moved
    /// to `garbage`; if so, no read that resolved a grain to a merged epoch
    /// is still in flight (one barrier for the whole pass, taken even when
    /// a later merge fails, since the spliced epochs are garbage already).
    pub(crate) async fn merge_hidden(&self, pacer: &Pacer) -> Result<bool> {
        let mut merged = false;
        let mut result = Ok(());
        loop {
            let next = next_merge(&self.state().header);
            let Some((e, p)) = next else { break };
            result = self.merge_into_parent(e, p, pacer).await;
            if result.is_err() {
                break;
            }
            merged = true;
        }
        if merged {
            // Barrier: requests that may have resolved grains to a merged
            // epoch before its splice finish before its objects can go.
            // New requests are not held back (grace.rs).
            self.inner.grace.wait_for_earlier().await;
        }
        result.map(|()| merged)
    }

    async fn merge_into_parent(&self, e: Epoch, p: Epoch, pacer: &Pacer) -> Result<()> {
        let (Some(ed), Some(pd)) = (self.delta_of(e), self.delta_of(p)) else {
            return Err(Error::corrupt(format!(
                "records of epochs {e} and {p} are not loaded"
            )));
        };
        let geo = self.geometry();
        let id = self.inner.id.clone();
        let parent = self.state().header.epochs.get(&p).and_then(|m| m.parent);
        let grains = ed.data.len() + ed.zero.len() + pd.data.len() + pd.zero.len();
        let (ed2, pd2) = (ed.clone(), pd.clone());
        let (grown, record, objects, zeroed_objects) =
            cpu(grains, move || merge_plan(geo, &id, p, parent, &pd2, &ed2)).await??;
        drop(pd);
        self.unpack(p).await?;
        let backend = &self.inner.backend;
        pacer.op().await;
        backend
            .operate(
                &layout::epoch_object(&self.inner.id, p),
                WriteOp::new().write_full(record),
            )
            .await
            .map_err(|err| err.context(format!("rewriting epoch {p}'s record in a merge")))?;
        backend.flush().await?;
        self.install_sealed_delta(p, grown);
        stream::iter(objects.iter())
            .map(|o| {
                let zero_in_parent = zeroed_objects.contains(o);
                self.merge_object(ObjectNo(o), e, p, &ed, zero_in_parent, pacer)
            })
            .buffer_unordered(MERGE_PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        // The copies are durable before the splice stops `e` shadowing them.
        backend.flush().await?;
        self.splice(e).await?;
        self.state().cache.clear();
        Ok(())
    }

    /// Copies `e`'s grains of object `o` into `p`'s object and, when `p`
    /// has that object, zeroes the grains `e` discarded, in one op.
    async fn merge_object(
        &self,
        o: ObjectNo,
        e: Epoch,
        p: Epoch,
        ed: &EpochDelta,
        zero_in_parent: bool,
        pacer: &Pacer,
    ) -> Result<()> {
        let geo = self.geometry();
        let gs = geo.grain_size;
        let first = geo.first_grain(o);
        let last = first + u64::from(geo.grains_per_object());
        let src = layout::data_object(&self.inner.id, o, e);
        let mut actions = Vec::new();
        let mut keys = Vec::new();
        for (g0, g1) in runs(&ed.data, first, last) {
            let (off, len) = ((g0 - first) * gs, (g1 - g0) * gs);
            pacer.op().await;
            let got = self
                .inner
                .backend
                .read(&src, off, len)
                .await
                .map_err(|err| err.context(format!("reading {src} for a merge")))?;
            let mut buf = BytesMut::zeroed(len as usize);
            buf[..got.len()].copy_from_slice(&got);
            actions.push(Action::Write {
                offset: off,
                data: buf.freeze(),
            });
            keys.extend((g0..g1).map(|g| grain_kv(g - first, GRAIN_DATA)));
        }
        let zeroed = if zero_in_parent {
            runs(&ed.zero, first, last)
        } else {
            Vec::new()
        };
        for (g0, g1) in zeroed {
            actions.push(Action::Zero {
                offset: (g0 - first) * gs,
                len: (g1 - g0) * gs,
            });
            keys.extend((g0..g1).map(|g| grain_kv(g - first, GRAIN_ZERO)));
        }
        if !actions.is_empty() {
            pacer.op().await;
        }
        self.write_into_sealed(o, p, actions, keys, "a merge").await
    }
}

/// The merge of `e` into `p`, planned: `p`'s grown delta and its record,
/// the objects the merge writes, and those of `p` where `e` zeroes grains.
/// Pure CPU.
fn merge_plan(
    geo: crate::layout::Geometry,
    id: &crate::ids::ImageId,
    p: Epoch,
    parent: Option<Epoch>,
    pd: &EpochDelta,
    ed: &EpochDelta,
) -> Result<(EpochDelta, Bytes, RoaringTreemap, RoaringTreemap)> {
    let gpo = u64::from(geo.grains_per_object());
    let has = |set: &RoaringTreemap, o: u64| set.range_cardinality(o * gpo..(o + 1) * gpo) > 0;
    // `p`'s objects that `e` zeroes grains of (their bytes and keys go).
    let zeroed_objects: RoaringTreemap = pd.touched.iter().filter(|&o| has(&ed.zero, o)).collect();
    let mut objects = ed.touched.clone();
    objects |= &zeroed_objects;
    let with_data: RoaringTreemap = ed.touched.iter().filter(|&o| has(&ed.data, o)).collect();
    // The record first: it names every grain `e` adds before any byte is
    // copied. Nothing reads those grains of `p` while `e` exists, and if
    // the merge stops half way, a later trim of `p` then punches its
    // copies of grains `e` loses, instead of leaving them unnamed.
    let grown = merged_delta(pd, ed, &with_data);
    let record = Bytes::from(grown.encode(id, p, parent)?);
    Ok((grown, record, objects, zeroed_objects))
}

fn grain_kv(index_in_object: u64, value: &'static [u8]) -> (String, Bytes) {
    (
        layout::grain_key(index_in_object as u32),
        Bytes::from_static(value),
    )
}

/// Maximal runs `[start, end)` of grains of `set` within `[first, last)`.
fn runs(set: &RoaringTreemap, first: u64, last: u64) -> Vec<(u64, u64)> {
    let mut it = set.iter();
    it.advance_to(first);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for g in it.take_while(|g| *g < last) {
        match out.last_mut() {
            Some((_, end)) if *end == g => *end = g + 1,
            _ => out.push((g, g + 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_gaps_and_bounds() {
        let set: RoaringTreemap = [1u64, 2, 3, 7, 8, 15, 16].into_iter().collect();
        assert_eq!(runs(&set, 0, 16), vec![(1, 4), (7, 9), (15, 16)]);
        assert_eq!(runs(&set, 8, 32), vec![(8, 9), (15, 17)]);
        assert!(runs(&set, 9, 15).is_empty());
    }

    #[test]
    fn merged_delta_lets_the_child_win() {
        let set = |v: &[u64]| -> RoaringTreemap { v.iter().copied().collect() };
        let p = EpochDelta {
            touched: set(&[0]),
            data: set(&[1, 2, 3]),
            zero: set(&[4, 5]),
            reclaimed: RoaringTreemap::new(),
            moved: set(&[1, 3]),
        };
        let e = EpochDelta {
            touched: set(&[0, 1]),
            data: set(&[3, 4, 600]),
            zero: set(&[2, 700]),
            reclaimed: RoaringTreemap::new(),
            moved: set(&[600]),
        };
        let m = merged_delta(&p, &e, &set(&[0, 1]));
        assert_eq!(m.data, set(&[1, 3, 4, 600]));
        assert_eq!(m.zero, set(&[2, 5, 700]));
        assert_eq!(m.moved, set(&[1]), "only p's moved grains e left alone");
        assert_eq!(m.touched, set(&[0, 1]));
    }
}

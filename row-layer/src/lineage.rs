//! The chain of epochs a view (head or a snapshot) reads through, and the
//! resolution of a logical object's grains to the objects that hold them.
//!
//! A grain's contents at epoch `x` are those recorded by the newest epoch on
//! the path from `x` to the root that mentions the grain (as data or as zero);
//! for a clone the path continues into the parent image at the parent
//! snapshot's epoch, clipped to the clone's overlap. Resolution uses only the
//! in-memory epoch deltas, never the store, and its result per object is
//! cached, so a read costs backend operations only for the data itself.

use crate::ids::{Epoch, ImageId, ObjectNo};
use crate::layout::Geometry;
use crate::records::EpochDelta;
use std::collections::HashMap;
use std::sync::Arc;

/// Resolution of one grain: [`UNALLOCATED`], [`ZERO`], or `source + FIRST_SOURCE`.
pub(crate) type Loc = u32;
/// Nobody ever wrote the grain: reads as zeros.
pub(crate) const UNALLOCATED: Loc = 0;
/// The grain was discarded or zeroed: reads as zeros.
pub(crate) const ZERO: Loc = 1;
/// Offset of source indexes in a [`Loc`].
pub(crate) const FIRST_SOURCE: Loc = 2;

/// Maximal runs `[i, j)` of `locs` whose grains satisfy `keep`.
pub(crate) fn runs_where(locs: &[Loc], keep: impl Fn(Loc) -> bool) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < locs.len() {
        if !keep(locs[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < locs.len() && keep(locs[i]) {
            i += 1;
        }
        runs.push((start, i));
    }
    runs
}

/// One epoch on a view's path.
#[derive(Clone)]
pub(crate) struct Link {
    /// Index into [`Chain::sources`].
    pub(crate) source: u32,
    /// What the epoch recorded.
    pub(crate) delta: Arc<EpochDelta>,
    /// Grains at or past this index are cut off (clone overlap).
    pub(crate) limit: u64,
}

/// The path of a view, newest epoch first, plus the table of data sources.
#[derive(Clone, Default)]
pub(crate) struct Chain {
    pub(crate) links: Vec<Link>,
    /// (image, epoch) of every data source a [`Loc`] can name.
    /// Shared, so the read path takes it with a reference count instead of
    /// copying a table that grows with the image's history.
    pub(crate) sources: Arc<Vec<(ImageId, Epoch)>>,
    /// Where each entry of `sources` is, so that building a chain of `n`
    /// links costs O(n), not O(n²) (10,000 snapshots). Rebuilt whenever it
    /// does not cover `sources` (a chain made from another's table).
    pub(crate) positions: HashMap<(ImageId, Epoch), u32>,
}

impl Chain {
    /// Index of a source, adding it if new.
    pub(crate) fn source_index(&mut self, image: &ImageId, epoch: Epoch) -> u32 {
        if self.positions.len() != self.sources.len() {
            self.positions = (self.sources.iter().cloned()).zip(0u32..).collect();
        }
        let key = (image.clone(), epoch);
        if let Some(&i) = self.positions.get(&key) {
            return i;
        }
        let i = self.sources.len() as u32;
        Arc::make_mut(&mut self.sources).push(key.clone());
        self.positions.insert(key, i);
        i
    }

    /// Resolves every grain of object `o`.
    pub(crate) fn resolve_object(&self, geo: &Geometry, o: ObjectNo) -> Vec<Loc> {
        const UNRESOLVED: Loc = Loc::MAX;
        let gpo = geo.grains_per_object() as usize;
        let first = geo.first_grain(o);
        let mut out = vec![UNRESOLVED; gpo];
        let mut left = gpo;
        for link in &self.links {
            if left == 0 {
                break;
            }
            let end = (first + gpo as u64).min(link.limit);
            if end <= first {
                continue;
            }
            let src = link.source + FIRST_SOURCE;
            for (bitmap, value) in [(&link.delta.data, src), (&link.delta.zero, ZERO)] {
                let mut it = bitmap.iter();
                it.advance_to(first);
                for g in it {
                    if g >= end {
                        break;
                    }
                    let slot = &mut out[(g - first) as usize];
                    if *slot == UNRESOLVED {
                        *slot = value;
                        left -= 1;
                    }
                }
            }
        }
        for slot in &mut out {
            if *slot == UNRESOLVED {
                *slot = UNALLOCATED;
            }
        }
        out
    }
}

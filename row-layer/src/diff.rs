//! Changed-block diffs between two points of an image, from the map deltas.
//!
//! The grains changed between a snapshot (or bookmark) `a` and the view `b`
//! are the union of the deltas of the epochs on the paths from `a` and from
//! `b` up to their common ancestor, without the grains an epoch holds as
//! unchanged copies (`moved`: defragmentation's rewrites, defrag.rs). Whether a changed grain holds data or
//! reads as zeros at `b` comes from the newest delta on `b`'s path that
//! mentions it. No data object and no omap is read: the cost grows with the
//! number of changed grains (bitmap work), not with the image size.

use crate::error::{Error, Result};
use crate::ids::Epoch;
use crate::ids::ImageId;
use crate::image::Image;
use crate::image::State;
use crate::records::{EpochDelta, HeaderRecord};
use crate::store::path;
use roaring::RoaringTreemap;
use std::collections::HashSet;

/// One extent of a diff, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffExtent {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u64,
    /// True when the extent holds data at the end point; false when it
    /// reads as zeros there (discarded, zeroed, cut off).
    pub exists: bool,
}

/// Adds the grains `d` changed: its zeros and its data, except the grains
/// it holds as unchanged copies (`moved`, defrag.rs).
fn add_changes(changed: &mut RoaringTreemap, d: &EpochDelta) {
    if d.moved.is_empty() {
        *changed |= &d.data;
    } else {
        *changed |= &d.data - &d.moved;
    }
    *changed |= &d.zero;
}

/// The epoch and size of the snapshot, else bookmark, `name` of `header`:
/// where a diff may start.
pub(crate) fn base_of(header: &HeaderRecord, name: &str) -> Result<(Epoch, u64)> {
    if let Some(s) = header.snap(name) {
        return Ok((s.epoch, s.size));
    }
    if let Some(b) = header.bookmarks.iter().find(|b| b.name == name) {
        return Ok((b.epoch, b.size));
    }
    Err(Error::not_found(format!(
        "snapshot or bookmark {name} does not exist"
    )))
}

/// The deltas a diff from epoch `from` to the view of `st` unions: the
/// view's own links up to their common ancestor, then the base's path up
/// to it (the ancestor itself excluded on both sides).
pub(crate) fn deltas_since<'a>(
    st: &'a State,
    own_id: &ImageId,
    from: Epoch,
) -> Result<Vec<&'a EpochDelta>> {
    let from_path = path(&st.header, from);
    let from_set: HashSet<Epoch> = from_path.iter().copied().collect();
    let mut out = Vec::new();
    let mut lca = None;
    for l in &st.chain.links {
        let (img, e) = &st.chain.sources[l.source as usize];
        if img != own_id {
            break;
        }
        if from_set.contains(e) {
            lca = Some(*e);
            break;
        }
        out.push(&*l.delta);
    }
    for e in from_path {
        if Some(e) == lca {
            break;
        }
        let d = st.deltas.get(&e).ok_or_else(|| {
            Error::corrupt(format!("epoch {e} on the diff base's path is not loaded"))
        })?;
        out.push(&**d);
    }
    Ok(out)
}

impl Image {
    /// The epoch and size a diff may start from: a snapshot, else a bookmark.
    pub(crate) fn diff_base(&self, name: &str) -> Result<(Epoch, u64)> {
        base_of(&self.state().header, name)
    }

    /// Grains changed since `from` (None: since the beginning, i.e. every
    /// grain ever recorded) up to this view, and those of them holding data.
    pub fn changed_grains(&self, from: Option<&str>) -> Result<(RoaringTreemap, RoaringTreemap)> {
        self.changed_grains_with(from, true)
    }

    /// [`Image::changed_grains`]; with `include_parent` false and no `from`,
    /// only the grains this image itself recorded (a clone's own writes,
    /// librbd's `include_parent = 0`).
    fn changed_grains_with(
        &self,
        from: Option<&str>,
        include_parent: bool,
    ) -> Result<(RoaringTreemap, RoaringTreemap)> {
        let base = from.map(|n| self.diff_base(n)).transpose()?;
        let st = self.state();
        let own_id = &self.inner.id;
        let mut changed = RoaringTreemap::new();
        match base {
            None => {
                for l in &st.chain.links {
                    if !include_parent && st.chain.sources[l.source as usize].0 != *own_id {
                        break;
                    }
                    let mut d = l.delta.data.clone();
                    d |= &l.delta.zero;
                    if l.limit != u64::MAX {
                        d.remove_range(l.limit..);
                    }
                    changed |= d;
                }
            }
            Some((from_epoch, _)) => {
                for d in deltas_since(&st, own_id, from_epoch)? {
                    add_changes(&mut changed, d);
                }
            }
        }
        let end = self.inner.geo.grains_for(st.size);
        changed.remove_range(end..);
        let mut remaining = changed.clone();
        let mut data = RoaringTreemap::new();
        for l in &st.chain.links {
            if remaining.is_empty() {
                break;
            }
            let mut r = remaining.clone();
            if l.limit != u64::MAX {
                r.remove_range(l.limit..);
            }
            let d = &r & &l.delta.data;
            let z = &r & &l.delta.zero;
            remaining -= &d;
            remaining -= &z;
            data |= d;
        }
        Ok((changed, data))
    }

    /// Extents changed since `from` (a snapshot or bookmark; None = from the
    /// beginning, listing only allocated data) up to this view, in order, at
    /// grain granularity (the last extent is clipped to the image size).
    pub fn diff(&self, from: Option<&str>) -> Result<Vec<DiffExtent>> {
        self.diff_with(from, true)
    }

    /// The data extents this image itself wrote since its creation, without
    /// its parent's (for a clone; the same as `diff(None)` otherwise).
    pub fn diff_own(&self) -> Result<Vec<DiffExtent>> {
        self.diff_with(None, false)
    }

    fn diff_with(&self, from: Option<&str>, include_parent: bool) -> Result<Vec<DiffExtent>> {
        let (changed, data) = self.changed_grains_with(from, include_parent)?;
        let gs = self.inner.geo.grain_size;
        let size = self.size();
        let only_data = from.is_none();
        let mut out: Vec<DiffExtent> = Vec::new();
        for g in changed.iter() {
            let exists = data.contains(g);
            if only_data && !exists {
                continue;
            }
            let offset = g * gs;
            let length = gs.min(size - offset);
            if let Some(last) = out.last_mut() {
                if last.exists == exists && last.offset + last.length == offset {
                    last.length += length;
                    continue;
                }
            }
            out.push(DiffExtent {
                offset,
                length,
                exists,
            });
        }
        Ok(out)
    }
}

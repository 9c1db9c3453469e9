//! Space accounting: what the head uses and what each snapshot holds alone.
//!
//! Computed from the epoch deltas: for every pinned view (head and each
//! snapshot) the grains it sees in each of the image's own epochs; a grain
//! version counts as exclusive to a snapshot when no other view sees it —
//! the bytes that removing the snapshot would free.

use crate::error::Result;
use crate::ids::Epoch;
use crate::image::Image;
use roaring::RoaringTreemap;
use std::collections::BTreeMap;

/// Result of [`Image::space_usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceUsage {
    /// The head's size.
    pub provisioned: u64,
    /// Bytes of data the head sees that this image stores (not its parent).
    pub head_used: u64,
    /// Per snapshot (oldest first): name, provisioned size, bytes only it sees.
    pub snapshots: Vec<(String, u64, u64)>,
    /// All data bytes the image's own epochs hold, visible to anyone.
    pub stored: u64,
}

type Visible = BTreeMap<Epoch, RoaringTreemap>;

impl Image {
    fn visible_from(&self, start: Epoch) -> Visible {
        let st = self.state();
        let mut covered = RoaringTreemap::new();
        let mut out = Visible::new();
        for e in crate::store::path(&st.header, start) {
            let delta = if e == st.header.head {
                st.chain.links.first().map(|l| l.delta.clone())
            } else {
                st.deltas.get(&e).cloned()
            };
            let Some(d) = delta else { continue };
            let seen = &d.data - &covered;
            covered |= &d.data;
            covered |= &d.zero;
            if !seen.is_empty() {
                out.insert(e, seen);
            }
        }
        out
    }

    /// Computes [`SpaceUsage`] (CPU work over the deltas; no backend I/O).
    pub fn space_usage(&self) -> Result<SpaceUsage> {
        let (header, gs) = (self.header(), self.inner.geo.grain_size);
        let mut views: Vec<(Option<String>, u64, Visible)> = Vec::new();
        views.push((None, header.size, self.visible_from(header.head)));
        for s in &header.snapshots {
            views.push((Some(s.name.clone()), s.size, self.visible_from(s.epoch)));
        }
        let count = |v: &Visible| v.values().map(|b| b.len()).sum::<u64>() * gs;
        let head_used = count(&views[0].2);
        let mut all = Visible::new();
        for (_, _, v) in &views {
            for (e, b) in v {
                *all.entry(*e).or_default() |= b;
            }
        }
        let mut snapshots = Vec::new();
        for (i, (name, size, v)) in views.iter().enumerate() {
            let Some(name) = name else { continue };
            let mut exclusive = 0;
            for (e, b) in v {
                let mut others = RoaringTreemap::new();
                for (j, (_, _, w)) in views.iter().enumerate() {
                    if j != i {
                        if let Some(ob) = w.get(e) {
                            others |= ob;
                        }
                    }
                }
                exclusive += (b - &others).len() * gs;
            }
            snapshots.push((name.clone(), *size, exclusive));
        }
        Ok(SpaceUsage {
            provisioned: header.size,
            head_used,
            snapshots,
            stored: count(&all),
        })
    }
}

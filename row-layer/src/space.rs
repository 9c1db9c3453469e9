//! Space accounting: what the head uses and what each snapshot holds alone.
//!
//! Computed from the epoch deltas: for every pinned view (head and each
//! snapshot) the grains it sees in each of the image's own epochs; a grain
//! version counts as exclusive to a snapshot when no other view sees it —
//! the bytes that removing the snapshot would free.

use crate::error::Result;
use crate::ids::Epoch;
use crate::image::Image;
use crate::records::{EpochDelta, HeaderRecord};
use roaring::RoaringTreemap;
use std::collections::BTreeMap;
use std::sync::Arc;

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
        let count = |v: &Visible| v.values().map(|b| b.len()).sum::<u64>() * gs;
        let head_used = count(&self.visible_from(header.head));
        let deltas: BTreeMap<Epoch, Arc<EpochDelta>> = {
            let st = self.state();
            header
                .epochs
                .keys()
                .filter_map(|&e| {
                    let d = if e == header.head {
                        st.chain.links.first().map(|l| l.delta.clone())
                    } else {
                        st.deltas.get(&e).cloned()
                    };
                    d.map(|d| (e, d))
                })
                .collect()
        };
        let mut views: BTreeMap<Epoch, Vec<usize>> = BTreeMap::new();
        for (i, s) in header.snapshots.iter().enumerate() {
            views.entry(s.epoch).or_default().push(i);
        }
        let (exclusive, stored) = exclusive_and_stored(&header, &deltas, &views);
        let snapshots = header
            .snapshots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.name.clone(),
                    s.size,
                    exclusive.get(&i).copied().unwrap_or(0) * gs,
                )
            })
            .collect();
        Ok(SpaceUsage {
            provisioned: header.size,
            head_used,
            snapshots,
            stored: stored * gs,
        })
    }
}

/// Which views reach an epoch still wanting a grain (no newer epoch on
/// their way mentioned it): grains exactly one view wants, by view, and
/// grains several views want.
#[derive(Default)]
struct Arrivals {
    single: BTreeMap<Viewer, RoaringTreemap>,
    many: RoaringTreemap,
}

/// The head, or snapshot number `i` of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Viewer {
    Head,
    Snap(usize),
}

impl Arrivals {
    /// Adds `bits` wanted by `who`: grains someone else wants become shared.
    fn add(&mut self, who: Viewer, mut bits: RoaringTreemap) {
        bits -= &self.many;
        for (other, theirs) in self.single.iter_mut() {
            if *other == who {
                continue;
            }
            let both = &*theirs & &bits;
            if !both.is_empty() {
                *theirs -= &both;
                bits -= &both;
                self.many |= both;
            }
        }
        *self.single.entry(who).or_default() |= bits;
        self.single.retain(|_, b| !b.is_empty());
    }

    fn absorb(&mut self, other: Arrivals) {
        let Arrivals { single, many } = other;
        self.many |= many;
        let shared = self.many.clone();
        for b in self.single.values_mut() {
            *b -= &shared;
        }
        for (who, bits) in single {
            self.add(who, bits);
        }
    }

    /// What goes on to the parent of an epoch that mentions `mentioned`.
    fn without(mut self, mentioned: &RoaringTreemap) -> Arrivals {
        self.many -= mentioned;
        for b in self.single.values_mut() {
            *b -= mentioned;
        }
        self.single.retain(|_, b| !b.is_empty());
        self
    }
}

/// Grain versions only one snapshot sees (per snapshot index) and those
/// any view sees, in one pass over the epochs, children before parents
/// (a parent's number is smaller). A view arrives at its own epoch wanting
/// every grain any epoch stores, and loses the grains each epoch on its way
/// mentions; what an epoch stores of what arrives is seen by the arrivals.
/// In a chain, the nearest view above an epoch wants a superset of what
/// farther views want, so `single` stays small: O(epochs × bitmap
/// operations), not O(views × path).
fn exclusive_and_stored(
    header: &HeaderRecord,
    deltas: &BTreeMap<Epoch, Arc<EpochDelta>>,
    views: &BTreeMap<Epoch, Vec<usize>>,
) -> (BTreeMap<usize, u64>, u64) {
    let everything = deltas
        .values()
        .fold(RoaringTreemap::new(), |acc, d| acc | &d.data);
    let mut outgoing: BTreeMap<Epoch, Arrivals> = BTreeMap::new();
    let mut exclusive: BTreeMap<usize, u64> = BTreeMap::new();
    let mut stored = 0;
    let mut children: BTreeMap<Epoch, Vec<Epoch>> = BTreeMap::new();
    for (&c, m) in &header.epochs {
        if let Some(p) = m.parent {
            children.entry(p).or_default().push(c);
        }
    }
    for (&e, meta) in header.epochs.iter().rev() {
        let mut here = Arrivals::default();
        for &c in children.get(&e).into_iter().flatten() {
            if let Some(a) = outgoing.remove(&c) {
                here.absorb(a);
            }
        }
        if e == header.head {
            here.add(Viewer::Head, everything.clone());
        }
        for &i in views.get(&e).into_iter().flatten() {
            here.add(Viewer::Snap(i), everything.clone());
        }
        let Some(d) = deltas.get(&e) else { continue };
        for (who, bits) in &here.single {
            if let Viewer::Snap(i) = who {
                *exclusive.entry(*i).or_default() += d.data.intersection_len(bits);
            }
            stored += d.data.intersection_len(bits);
        }
        stored += d.data.intersection_len(&here.many);
        if meta.parent.is_some() {
            let mentioned = &d.data | &d.zero;
            outgoing.insert(e, here.without(&mentioned));
        }
    }
    (exclusive, stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::mem::MemBackend;
    use crate::backend::Backend;
    use crate::store::{CreateOptions, Store};
    use bytes::Bytes;
    use std::sync::Arc;

    /// The pairwise definition: a snapshot's exclusive bytes are the grain
    /// versions it sees that no other view (head or snapshot) sees.
    fn exclusive_pairwise(img: &Image) -> Vec<u64> {
        let header = img.header();
        let gs = img.inner.geo.grain_size;
        let mut views = vec![img.visible_from(header.head)];
        views.extend(header.snapshots.iter().map(|s| img.visible_from(s.epoch)));
        (1..views.len())
            .map(|i| {
                let mut n = 0;
                for (e, b) in &views[i] {
                    let mut others = RoaringTreemap::new();
                    for (j, w) in views.iter().enumerate() {
                        if let (true, Some(ob)) = (j != i, w.get(e)) {
                            others |= ob;
                        }
                    }
                    n += (b - &others).len() * gs;
                }
                n
            })
            .collect()
    }

    /// Every grain version some view sees.
    fn stored_union(img: &Image) -> u64 {
        let header = img.header();
        let mut all = Visible::new();
        let starts = std::iter::once(header.head).chain(header.snapshots.iter().map(|s| s.epoch));
        for start in starts {
            for (e, b) in img.visible_from(start) {
                *all.entry(e).or_default() |= b;
            }
        }
        all.values().map(|b| b.len()).sum::<u64>() * img.inner.geo.grain_size
    }

    #[tokio::test]
    async fn exclusive_bytes_match_the_pairwise_definition() {
        let store = Store::new(Arc::new(MemBackend::new()) as Arc<dyn Backend>);
        let opts = CreateOptions {
            size: 1 << 20,
            object_size: 64 << 10,
            grain_size: 4096,
        };
        store.create("img", opts).await.expect("create");
        let img = store.open("img").await.expect("open");
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..60u64 {
            for _ in 0..next(12) {
                let g = next(256);
                let data = Bytes::from(vec![round as u8; 4096]);
                img.write(g * 4096, data).await.expect("write");
            }
            if next(5) == 0 {
                img.discard(next(256) * 4096, 3 * 4096)
                    .await
                    .expect("discard");
            }
            img.snap_create(&format!("s{round}")).await.expect("snap");
            let snaps = img.header().snapshots;
            match next(6) {
                0 | 1 if snaps.len() > 2 => {
                    let victim = &snaps[next(snaps.len() as u64) as usize].name;
                    img.snap_remove(victim).await.expect("remove");
                }
                2 => {
                    let target = &snaps[next(snaps.len() as u64) as usize].name;
                    img.snap_rollback(target).await.expect("rollback");
                }
                _ => {}
            }
            let usage = img.space_usage().expect("usage");
            let got: Vec<u64> = usage.snapshots.iter().map(|s| s.2).collect();
            assert_eq!(got, exclusive_pairwise(&img), "round {round}");
            assert_eq!(usage.stored, stored_union(&img), "round {round}");
        }
    }
}

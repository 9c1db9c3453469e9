//! Flatten: detach a clone from its parent without changing any view.
//!
//! Every view of a clone (the head, each snapshot, each bookmark) reads
//! through the clone's own epochs down to the lineage's root and then into
//! the parent. So the parent's data is copied *into the root epoch*, once,
//! for every grain the root does not cover itself: each view then finds the
//! same bytes one step earlier, and the parent link can go. Copying into the
//! head instead (what a clone without snapshots needs) would leave the
//! snapshots with nothing under them.
//!
//! A sealed root is written outside the I/O path, which never touches sealed
//! epochs: data plus `D` keys per object, a flush, the rewritten record, a
//! flush, and only then the header commit that drops the link. A crash
//! anywhere in between leaves the parent link in place, and the copied
//! grains hold the very bytes the parent snapshot (protected, immutable)
//! holds, so every view reads the same either way. The copy runs as a job
//! of the control task, so no snapshot removal or reclaim can trim or splice
//! the root while it runs; client I/O goes on.

use crate::backend::ext::NotFoundExt;
use crate::backend::{Action, WriteOp};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{Epoch, ObjectNo};
use crate::image::{Image, GRAIN_DATA};
use crate::layout;
use crate::lineage::{Chain, FIRST_SOURCE};
use crate::records::{EpochDelta, HeaderRecord, ParentLink};
use crate::store::{build_chain, parent_links};
use bytes::{Bytes, BytesMut};
use roaring::RoaringTreemap;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Epochs of the image's own lineage that have no parent epoch.
fn roots(h: &HeaderRecord) -> BTreeSet<Epoch> {
    h.epochs
        .iter()
        .filter(|(_, m)| m.parent.is_none())
        .map(|(e, _)| *e)
        .collect()
}

/// The largest overlap any view of the clone has with its parent.
fn widest_overlap(h: &HeaderRecord, p: &ParentLink) -> u64 {
    h.snapshots
        .iter()
        .filter_map(|s| s.parent_overlap)
        .fold(p.overlap, u64::max)
}

impl Image {
    /// Copies every grain any view of the clone still reads from its parent
    /// into the clone, then detaches it from the parent. The clone's
    /// snapshots keep their contents. Cost: the parent data it reads, one
    /// write per object that receives data, and for a sealed root one record
    /// rewrite; then one header commit.
    pub async fn flatten(&self) -> Result<()> {
        self.check_writable()?;
        let Some(parent) = self.header().parent else {
            return Err(Error::invalid("image is not a clone"));
        };
        let mut done = BTreeSet::new();
        for _round in 0..4 {
            for r in roots(&self.header()) {
                if !done.contains(&r) && self.copy_parent_into(r).await? {
                    done.insert(r);
                }
            }
            let (parent, copied) = (parent.clone(), done.clone());
            let detached = self
                .in_control(move |img| async move {
                    let _gate = img.inner.gate.write().await;
                    img.check_writable()?;
                    if !roots(&img.header()).is_subset(&copied) {
                        return Ok(false);
                    }
                    img.detach_from_parent(&parent).await.map(|()| true)
                })
                .await?;
            if detached {
                return Ok(());
            }
        }
        Err(Error::new(
            ErrorKind::Transient,
            "the clone's lineage kept changing during flatten; try again",
        ))
    }

    /// Copies the parent data root `r` lacks into it. Returns whether `r`
    /// received everything (false when `r` was the head and got sealed
    /// meanwhile: the rest then went to the new head).
    async fn copy_parent_into(&self, r: Epoch) -> Result<bool> {
        let geo = self.geometry();
        if r == self.header().head {
            let overlap = self.header().parent.map_or(0, |p| p.overlap);
            let end_grain = geo.grains_for(overlap.min(self.size()));
            let objects = end_grain.div_ceil(u64::from(geo.grains_per_object()));
            for o in 0..objects {
                let first = geo.first_grain(ObjectNo(o));
                let end = (first + u64::from(geo.grains_per_object())).min(end_grain);
                self.copy_up(ObjectNo(o), first, end).await?;
            }
            return Ok(self.header().head == r);
        }
        self.in_control(move |img| async move {
            let _gate = img.shared_gate().await;
            img.check_writable()?;
            img.copy_parent_into_sealed(r).await
        })
        .await?;
        Ok(true)
    }

    /// Copies parent grains into sealed root `r`; the caller holds the gate.
    async fn copy_parent_into_sealed(&self, r: Epoch) -> Result<()> {
        let geo = self.geometry();
        let header = self.header();
        if !roots(&header).contains(&r) {
            return Ok(()); // spliced meanwhile: its child covers all it had
        }
        let Some(mut p) = header.parent.clone() else {
            return Ok(());
        };
        p.overlap = widest_overlap(&header, &p);
        let mut scratch = Chain::default();
        let links = parent_links(&*self.inner.backend, Some(p.clone()), &geo, &mut scratch).await?;
        let through_parent = Chain {
            links,
            sources: scratch.sources,
            positions: Default::default(),
        };
        let root = self
            .state()
            .deltas
            .get(&r)
            .cloned()
            .ok_or_else(|| Error::corrupt(format!("record of root epoch {r} not loaded")))?;
        let mut grown = (*root).clone();
        let objects = geo
            .grains_for(p.overlap)
            .div_ceil(u64::from(geo.grains_per_object()));
        for o in 0..objects {
            let copied = self
                .copy_object_into_sealed(&through_parent, &root, r, ObjectNo(o))
                .await?;
            if !copied.is_empty() {
                grown.data |= &copied;
                grown.touched.insert(o);
            }
        }
        if grown.data.len() == root.data.len() {
            return Ok(());
        }
        // Its pack copy goes first (pack.rs); data durably; then the record
        // that names it, durably.
        self.unpack(r).await?;
        self.inner.backend.flush().await?;
        let parent_epoch = header.epochs.get(&r).and_then(|m| m.parent);
        self.inner
            .backend
            .operate(
                &layout::epoch_object(&self.inner.id, r),
                WriteOp::new().write_full(Bytes::from(grown.encode(
                    &self.inner.id,
                    r,
                    parent_epoch,
                )?)),
            )
            .await
            .map_err(|e| e.context("rewriting the root epoch's record"))?;
        self.inner.backend.flush().await?;
        self.install_sealed_delta(r, grown);
        Ok(())
    }

    /// Copies the grains of object `o` that the parent holds and root `r`
    /// does not cover into `r`'s data object, in one op. Returns the grains.
    async fn copy_object_into_sealed(
        &self,
        through_parent: &Chain,
        root: &EpochDelta,
        r: Epoch,
        o: ObjectNo,
    ) -> Result<RoaringTreemap> {
        let geo = self.geometry();
        let gs = geo.grain_size;
        let first = geo.first_grain(o);
        let locs = through_parent.resolve_object(&geo, o);
        let wanted = |i: usize| -> bool {
            let g = first + i as u64;
            locs[i] >= FIRST_SOURCE && !root.data.contains(g) && !root.zero.contains(g)
        };
        let mut copied = RoaringTreemap::new();
        let mut actions = Vec::new();
        let mut keys = Vec::new();
        let mut i = 0;
        while i < locs.len() {
            if !wanted(i) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < locs.len() && wanted(j) && locs[j] == locs[i] {
                j += 1;
            }
            let (img, ep) = &through_parent.sources[(locs[i] - FIRST_SOURCE) as usize];
            let src = layout::data_object(img, o, *ep);
            let len = (j - i) as u64 * gs;
            let got = self
                .inner
                .backend
                .read(&src, i as u64 * gs, len)
                .await
                .or_absent()
                .map_err(|e| e.context(format!("reading {src} for flatten")))?
                .unwrap_or_default();
            let mut buf = BytesMut::zeroed(len as usize);
            buf[..got.len()].copy_from_slice(&got);
            actions.push(Action::Write {
                offset: i as u64 * gs,
                data: buf.freeze(),
            });
            for k in i..j {
                copied.insert(first + k as u64);
                keys.push((layout::grain_key(k as u32), Bytes::from_static(GRAIN_DATA)));
            }
            i = j;
        }
        self.write_into_sealed(o, r, actions, keys, "flatten")
            .await?;
        Ok(copied)
    }

    /// One op on sealed epoch `e`'s object `o`: `actions` plus the grain
    /// `keys` they make true (nothing when there are no actions). Used by
    /// flatten and merge, which write grains no view reads there yet.
    pub(crate) async fn write_into_sealed(
        &self,
        o: ObjectNo,
        e: Epoch,
        mut actions: Vec<Action>,
        keys: Vec<(String, Bytes)>,
        why: &str,
    ) -> Result<()> {
        if actions.is_empty() {
            return Ok(());
        }
        actions.push(Action::OmapSet(keys));
        let oid = layout::data_object(&self.inner.id, o, e);
        self.inner
            .backend
            .operate(
                &oid,
                WriteOp {
                    guards: vec![],
                    actions,
                },
            )
            .await
            .map_err(|err| err.context(format!("writing {oid} for {why}")))
    }

    /// Replaces sealed epoch `e`'s delta in memory (every chain link to it).
    pub(crate) fn install_sealed_delta(&self, e: Epoch, delta: EpochDelta) {
        let id = self.inner.id.clone();
        let delta = Arc::new(delta);
        let mut st = self.state();
        st.deltas.insert(e, delta.clone());
        let chain = &mut st.chain;
        for l in &mut chain.links {
            if chain.sources.get(l.source as usize) == Some(&(id.clone(), e)) {
                l.delta = delta.clone();
            }
        }
        st.cache.clear();
    }

    /// Drops the parent link (header commit) and the parent's children key.
    /// The caller holds the gate exclusively and has copied every root.
    async fn detach_from_parent(&self, parent: &ParentLink) -> Result<()> {
        self.inner.backend.flush().await?;
        let mut header = self.header();
        header.parent = None;
        self.commit_header(&mut header, vec![]).await?;
        {
            let mut st = self.state();
            st.parent_links.clear();
            let head_delta = st.chain.links.first().map(|l| l.delta.clone());
            let chain = std::mem::take(&mut st.chain);
            st.chain = build_chain(&header, &st.deltas, head_delta, header.head, &[], chain)
                .map_err(|e| self.poison(e))?;
            st.cache.clear();
            st.header = header;
        }
        self.flush_committed().await?;
        self.inner
            .backend
            .operate(
                &layout::children_object(&parent.image),
                WriteOp::new().action(Action::OmapRemove(vec![layout::children_key(
                    parent.snap,
                    self.id(),
                )])),
            )
            .await
            .or_absent()
            .map(|_| ())
    }
}

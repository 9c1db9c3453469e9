//! The reclaimer: frees data that no snapshot, bookmark or head can see.
//!
//! It runs on the owner's control task (control.rs), in the background after
//! every transition that can create garbage (snapshot create/remove,
//! rollback, shrink), after open, and when asked (`Image::reclaim`, `close`).
//! It takes no gate: it only removes what no view can resolve to. Three steps, each re-checked against the committed header
//! before anything is deleted (the header is re-read from the store, so a
//! stale plan can never delete what a newer header still needs):
//! 1. epochs that no pinned epoch (head, snapshot, bookmark) descends from are
//!    moved to the header's garbage list;
//! 2. garbage epochs lose their data objects, touch keys and records;
//! 3. a hidden epoch (sealed, no snapshot) loses every grain that each view
//!    passing through it (the head, snapshots below it) meets a newer version
//!    of first: nobody can resolve to them any more. When such an epoch has
//!    nothing left it is spliced out of the lineage (its children inherit
//!    its parent);
//! 4. a hidden epoch whose parent is hidden too and has no other child is
//!    merged into that parent (merge.rs), so a history of removed snapshots
//!    folds into one epoch instead of growing the lineage.
//!
//! Before step 3 the backend is flushed, so a child's rewrite is durable
//! before the grain it hides is punched.

use crate::backend::ext::{BackendExt, NotFoundExt};
use crate::backend::{Action, WriteOp};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{Epoch, ObjectNo};
use crate::image::Image;
use crate::layout;
use crate::records::{EpochDelta, EpochState, HeaderRecord};
use crate::store::{build_chain, read_epoch, read_header};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use roaring::RoaringTreemap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const DELETE_PARALLELISM: usize = 32;

/// Epochs some pinned epoch descends from (pinned ones included).
pub(crate) fn reachable(h: &HeaderRecord) -> BTreeSet<Epoch> {
    let mut out = BTreeSet::new();
    let pinned = std::iter::once(h.head)
        .chain(h.snapshots.iter().map(|s| s.epoch))
        .chain(h.bookmarks.iter().map(|b| b.epoch));
    for p in pinned {
        let mut cur = Some(p);
        while let Some(e) = cur {
            if !out.insert(e) {
                break;
            }
            cur = h.epochs.get(&e).and_then(|m| m.parent);
        }
    }
    out
}

impl Image {
    /// Runs a full pass of the reclaimer. Control-task only (see control.rs):
    /// it takes no gate.
    pub(crate) async fn reclaim_now(&self) -> Result<()> {
        self.check_writable()?;
        self.collect_unreachable().await?;
        self.delete_garbage().await?;
        self.trim_hidden().await?;
        if self.merge_hidden().await? {
            self.delete_garbage().await?;
        }
        Ok(())
    }

    async fn collect_unreachable(&self) -> Result<()> {
        let mut header = self.header();
        let live = reachable(&header);
        let dead: Vec<Epoch> = header
            .epochs
            .keys()
            .filter(|e| !live.contains(e))
            .copied()
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        for e in &dead {
            header.epochs.remove(e);
            header.garbage.push(*e);
        }
        self.commit_header(&header, vec![]).await?;
        self.state().header = header;
        Ok(())
    }

    async fn delete_garbage(&self) -> Result<()> {
        let backend = self.inner.backend.clone();
        let id = self.inner.id.clone();
        let hdr_oid = layout::header_object(&id);
        loop {
            let Some(g) = self.header().garbage.first().copied() else {
                return Ok(());
            };
            // Re-check against the committed header before deleting anything.
            let committed = read_header(&*backend, &id).await?;
            if !committed.garbage.contains(&g) || committed.epochs.contains_key(&g) {
                return Err(self.poison(Error::corrupt(format!(
                    "reclaimer plan for epoch {g} disagrees with the committed header"
                ))));
            }
            // The header naming `g` as garbage is durable before its parts go.
            backend.flush().await?;
            let mut objects = RoaringTreemap::new();
            match read_epoch(&*backend, &id, g).await {
                Ok(d) => objects |= &d.touched,
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    // Never sealed (a discarded head): the touch keys name its
                    // objects, and its checkpoint those whose keys it covered.
                    objects |=
                        crate::checkpoint::objects_of_discarded_head(&*backend, &id, g).await?;
                }
                Err(e) => return Err(e),
            }
            let touch = backend.omap_all(&hdr_oid, &layout::touch_prefix(g)).await?;
            let mut keys = Vec::with_capacity(touch.len());
            for (k, _) in touch {
                let (_, o) = layout::parse_touch_key(&k)?;
                objects.insert(o.0);
                keys.push(k);
            }
            stream::iter(objects.iter())
                .map(|o| {
                    let backend = backend.clone();
                    let oid = layout::data_object(&id, ObjectNo(o), g);
                    async move { backend.operate(&oid, WriteOp::remove()).await }
                })
                .buffer_unordered(DELETE_PARALLELISM)
                .try_collect::<Vec<()>>()
                .await?;
            self.throttle_reclaim(objects.len() as usize + 1).await;
            // Data objects first, durably: the record lists them.
            backend.flush().await?;
            backend
                .operate(&layout::epoch_object(&id, g), WriteOp::remove())
                .await?;
            // A discarded head's checkpoint (or one a crash left after a seal).
            backend
                .operate(&layout::ckpt_object(&id, g), WriteOp::remove())
                .await?;
            let mut header = self.header();
            header.garbage.retain(|e| *e != g);
            self.commit_header(&header, vec![Action::OmapRemove(keys)])
                .await?;
            self.state().header = header;
        }
    }

    pub(crate) fn delta_of(&self, e: Epoch) -> Option<Arc<EpochDelta>> {
        let st = self.state();
        if e == st.header.head {
            return st.chain.links.first().map(|l| l.delta.clone());
        }
        st.deltas.get(&e).cloned()
    }

    /// Grains of each hidden epoch that nothing needs any more: every view
    /// (the head, a snapshot) whose path passes through the epoch meets a
    /// newer version first, and so does every diff base (snapshot or
    /// bookmark) below it. A diff from base X to view V unions the deltas on
    /// the paths from X and V up to their common ancestor; since X and V are
    /// both below any epoch on those paths, a grain dropped from one epoch's
    /// delta is still in the delta of a lower epoch on the same path, and the
    /// lowest such epoch is a base or a view, whose delta is never trimmed.
    /// Children are visited before parents (a parent's number is smaller).
    fn dead_grains(&self, header: &HeaderRecord) -> BTreeMap<Epoch, RoaringTreemap> {
        let views: BTreeSet<Epoch> = std::iter::once(header.head)
            .chain(header.snapshots.iter().map(|s| s.epoch))
            .collect();
        let bookmarked: BTreeSet<Epoch> = header.bookmarks.iter().map(|b| b.epoch).collect();
        // Per epoch: grains that every view and base in its subtree finds at
        // or below it; absent when none passes through it.
        let mut below: BTreeMap<Epoch, RoaringTreemap> = BTreeMap::new();
        let mut dead = BTreeMap::new();
        for (&e, _) in header.epochs.iter().rev() {
            let shadowed = intersect(
                header
                    .epochs
                    .iter()
                    .filter(|(_, m)| m.parent == Some(e))
                    .filter_map(|(c, _)| below.get(c)),
            );
            let Some(delta) = self.delta_of(e) else {
                continue;
            };
            let mut own = delta.data.clone();
            own |= &delta.zero;
            if views.contains(&e) {
                below.insert(e, own);
                continue;
            }
            let Some(shadowed) = shadowed else {
                if bookmarked.contains(&e) {
                    below.insert(e, own);
                }
                continue;
            };
            // A bookmarked epoch keeps its whole delta (its data grains are
            // punched but stay listed), so bases below see only that.
            if !bookmarked.contains(&e) {
                own |= &shadowed;
            }
            below.insert(e, own);
            dead.insert(e, shadowed);
        }
        dead
    }

    async fn trim_hidden(&self) -> Result<()> {
        let header = self.header();
        let pinned: BTreeSet<Epoch> = header.snapshots.iter().map(|s| s.epoch).collect();
        let hidden: Vec<Epoch> = header
            .epochs
            .iter()
            .filter(|(e, m)| m.state == EpochState::Sealed && !pinned.contains(e))
            .map(|(e, _)| *e)
            .collect();
        if hidden.is_empty() {
            return Ok(());
        }
        let dead = self.dead_grains(&header);
        // A newer version must be durable before the grain it hides goes.
        self.inner.backend.flush().await?;
        let mut spliced = false;
        for e in hidden {
            let (Some(ed), Some(dead)) = (self.delta_of(e), dead.get(&e)) else {
                continue;
            };
            let bookmarked = self.header().bookmarks.iter().any(|b| b.epoch == e);
            let mut mine = &ed.data - &ed.reclaimed;
            if !bookmarked {
                mine |= &ed.zero;
            }
            let superseded = &mine & dead;
            let mut trimmed = (*ed).clone();
            if !superseded.is_empty() {
                trimmed = self.punch(e, &ed, &superseded, bookmarked).await?;
            }
            if !bookmarked && trimmed.data.is_empty() && trimmed.zero.is_empty() {
                self.splice(e).await?;
                spliced = true;
            }
        }
        if spliced {
            self.delete_garbage().await?;
        }
        Ok(())
    }

    /// Punches `superseded` grains out of hidden epoch `e`, rewriting its record.
    /// A bookmarked epoch keeps its delta (diffs from the bookmark need it)
    /// and records the freed grains in `reclaimed` instead.
    async fn punch(
        &self,
        e: Epoch,
        ed: &EpochDelta,
        superseded: &RoaringTreemap,
        keep_delta: bool,
    ) -> Result<EpochDelta> {
        let geo = self.inner.geo;
        let gs = geo.grain_size;
        let gpo = u64::from(geo.grains_per_object());
        let id = self.inner.id.clone();
        let backend = self.inner.backend.clone();
        let mut trimmed = ed.clone();
        trimmed.data -= superseded;
        trimmed.data -= &ed.reclaimed;
        trimmed.zero -= superseded;
        let gone_data = &ed.data & superseded;
        let mut ops = Vec::new();
        for o in ed.touched.iter() {
            let first = o * gpo;
            let remaining = trimmed.data.range_cardinality(first..first + gpo);
            let oid = layout::data_object(&id, ObjectNo(o), e);
            if remaining == 0 {
                trimmed.touched.remove(o);
                ops.push((oid, WriteOp::remove()));
                continue;
            }
            let mut it = gone_data.iter();
            it.advance_to(first);
            let gone: Vec<u64> = it.take_while(|g| *g < first + gpo).collect();
            if gone.is_empty() {
                continue;
            }
            let mut op = WriteOp::new();
            let mut keys = Vec::with_capacity(gone.len());
            let mut i = 0;
            while i < gone.len() {
                let mut j = i + 1;
                while j < gone.len() && gone[j] == gone[j - 1] + 1 {
                    j += 1;
                }
                op = op.action(Action::Zero {
                    offset: (gone[i] - first) * gs,
                    len: (j - i) as u64 * gs,
                });
                i = j;
            }
            for g in gone {
                keys.push(layout::grain_key((g - first) as u32));
            }
            ops.push((oid, op.action(Action::OmapRemove(keys))));
        }
        let n_ops = ops.len();
        stream::iter(ops)
            .map(|(oid, op)| {
                let backend = backend.clone();
                async move { backend.operate(&oid, op).await.or_absent().map(|_| ()) }
            })
            .buffer_unordered(DELETE_PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        self.throttle_reclaim(n_ops + 1).await;
        if keep_delta {
            let mut kept = ed.clone();
            kept.reclaimed |= &gone_data;
            kept.touched = trimmed.touched.clone();
            trimmed = kept;
        }
        let parent = self.header().epochs.get(&e).and_then(|m| m.parent);
        backend
            .operate(
                &layout::epoch_object(&id, e),
                WriteOp::new().write_full(Bytes::from(trimmed.encode(&id, e, parent)?)),
            )
            .await?;
        let trimmed_arc = Arc::new(trimmed.clone());
        let mut st = self.state();
        st.deltas.insert(e, trimmed_arc.clone());
        let chain = &mut st.chain;
        for l in &mut chain.links {
            if chain.sources.get(l.source as usize) == Some(&(id.clone(), e)) {
                l.delta = trimmed_arc.clone();
            }
        }
        Ok(trimmed)
    }

    /// Removes empty hidden epoch `e` from the lineage (its children inherit
    /// its parent) and lists it as garbage.
    pub(crate) async fn splice(&self, e: Epoch) -> Result<()> {
        let mut header = self.header();
        let parent = header.epochs.get(&e).and_then(|m| m.parent);
        if parent.is_none() && header.bookmarks.iter().any(|b| b.epoch == e) {
            return Ok(()); // a bookmark at the root keeps its (empty) epoch
        }
        for m in header.epochs.values_mut() {
            if m.parent == Some(e) {
                m.parent = parent;
            }
        }
        header.epochs.remove(&e);
        // Its record (and any object left) goes through garbage deletion,
        // which is idempotent after a crash; removing it here would leak
        // the record when the process dies between the commit and the
        // removal.
        header.garbage.push(e);
        if let Some(p) = parent {
            for b in &mut header.bookmarks {
                if b.epoch == e {
                    b.epoch = p;
                }
            }
        }
        self.commit_header(&header, vec![]).await?;
        {
            let mut st = self.state();
            st.deltas.remove(&e);
            let head_delta = st.chain.links.first().map(|l| l.delta.clone());
            let chain = std::mem::take(&mut st.chain);
            let parent_links = st.parent_links.clone();
            st.chain = build_chain(
                &header,
                &st.deltas,
                head_delta,
                header.head,
                &parent_links,
                chain,
            )
            .map_err(|e| self.poison(e))?;
            st.header = header;
        }
        self.flush_committed().await
    }
}

/// The intersection of some bitmaps; `None` for none at all.
fn intersect<'a>(mut sets: impl Iterator<Item = &'a RoaringTreemap>) -> Option<RoaringTreemap> {
    let mut out = sets.next()?.clone();
    for s in sets {
        out &= s;
    }
    Some(out)
}

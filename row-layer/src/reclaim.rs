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
//!
//! It stays off the I/O path: every backend op of a pass takes a slot of
//! the pass's [`Pacer`] (`ImageOptions::reclaim_ops_per_sec`), bitmap work
//! on large epochs runs on the blocking pool ([`cpu`]) instead of a runtime
//! worker, the state mutex is held only to copy inputs and install
//! results, and it never takes the gate: after merges it waits once per
//! pass for the requests that were in flight (grace.rs, merge.rs), without
//! holding back new ones.

use crate::backend::ext::{BackendExt, NotFoundExt};
use crate::backend::{Action, WriteOp};
use crate::control::Pacer;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{Epoch, ImageId, ObjectNo};
use crate::image::Image;
use crate::layout::{self, Geometry};
use crate::records::{EpochDelta, EpochState, HeaderRecord};
use crate::store::{build_chain, read_epoch, read_header};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use roaring::RoaringTreemap;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

const DELETE_PARALLELISM: usize = 32;

/// Bitmap work on fewer grains than this runs in place (a few ms at most);
/// larger work goes to the blocking pool, so a reclaim pass over a big
/// epoch never occupies a runtime worker that client I/O needs.
const INLINE_CPU_GRAINS: u64 = 1 << 20;

/// Runs `f`, which costs about `grains` bitmap steps, in place or on the
/// blocking pool (see [`INLINE_CPU_GRAINS`]).
pub(crate) async fn cpu<T, F>(grains: u64, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if grains < INLINE_CPU_GRAINS {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io(format!("reclaimer CPU task failed: {e}")))
}

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
        let pacer = self.reclaim_pacer();
        self.collect_unreachable().await?;
        self.delete_garbage(&pacer).await?;
        self.trim_hidden(&pacer).await?;
        if self.merge_hidden(&pacer).await? {
            self.delete_garbage(&pacer).await?;
        }
        // Last, so that it copies the records the pass left (pack.rs).
        self.pack_now(&pacer).await
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
        self.commit_header(&mut header, vec![]).await?;
        self.state().header = header;
        Ok(())
    }

    async fn delete_garbage(&self, pacer: &Pacer) -> Result<()> {
        let backend = self.inner.backend.clone();
        let id = self.inner.id.clone();
        let hdr_oid = layout::header_object(&id);
        loop {
            let Some(g) = self.state().header.garbage.first().copied() else {
                return Ok(());
            };
            pacer.op().await;
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
            pacer.op().await;
            match read_epoch(&*backend, &id, g).await {
                Ok(d) => objects |= &d.touched,
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Corrupt) => {
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
                    async move {
                        pacer.op().await;
                        backend.operate(&oid, WriteOp::remove()).await
                    }
                })
                .buffer_unordered(DELETE_PARALLELISM)
                .try_collect::<Vec<()>>()
                .await?;
            // Data objects first, durably: the record lists them.
            backend.flush().await?;
            pacer.op().await;
            backend
                .operate(&layout::epoch_object(&id, g), WriteOp::remove())
                .await?;
            // A discarded head's checkpoint (or one a crash left after a seal).
            backend
                .operate(&layout::ckpt_object(&id, g), WriteOp::remove())
                .await?;
            let mut header = self.header();
            header.garbage.retain(|e| *e != g);
            keys.push(crate::pack::pack_key(g));
            self.commit_header(&mut header, vec![Action::OmapRemove(keys)])
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

    /// What `dead_grains` reads, copied under the state mutex: the sealed
    /// deltas (shared) and the head's own grains (copied, so that no write
    /// has to clone the head delta while the reclaimer holds it), plus the
    /// number of grains involved.
    fn lineage_copy(
        &self,
        header: &HeaderRecord,
    ) -> (HashMap<Epoch, Arc<EpochDelta>>, HeadOwn, u64) {
        let st = self.state();
        let mut grains = 0;
        let mut deltas = HashMap::new();
        for e in header.epochs.keys() {
            if let Some(d) = st.deltas.get(e) {
                grains += d.data.len() + d.zero.len();
                deltas.insert(*e, d.clone());
            }
        }
        let head_own = st
            .chain
            .links
            .first()
            .map(|l| HeadOwn {
                all: &l.delta.data | &l.delta.zero,
                changed: changes(&l.delta),
            })
            .unwrap_or_default();
        (deltas, head_own, grains + head_own_len(&st.chain))
    }

    async fn trim_hidden(&self, pacer: &Pacer) -> Result<()> {
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
        let (deltas, head_own, grains) = self.lineage_copy(&header);
        let h = header.clone();
        let mut dead = cpu(grains, move || dead_grains(&h, &deltas, head_own)).await?;
        // A newer version must be durable before the grain it hides goes.
        self.inner.backend.flush().await?;
        let bookmarked: BTreeSet<Epoch> = header.bookmarks.iter().map(|b| b.epoch).collect();
        let mut spliced = false;
        for e in hidden {
            let (Some(ed), Some(dead)) = (self.delta_of(e), dead.remove(&e)) else {
                continue;
            };
            let keep_delta = bookmarked.contains(&e);
            let empty = self.punch(e, ed, dead, keep_delta, pacer).await?;
            if !keep_delta && empty {
                self.splice(e).await?;
                spliced = true;
            }
        }
        if spliced {
            self.delete_garbage(pacer).await?;
        }
        Ok(())
    }

    /// Punches the grains of hidden epoch `e` that are in `dead` (and still
    /// its own), rewriting its record; says whether `e` holds nothing any
    /// more. A bookmarked epoch keeps its delta (diffs from the bookmark
    /// need it) and records the freed grains in `reclaimed` instead.
    async fn punch(
        &self,
        e: Epoch,
        ed: Arc<EpochDelta>,
        dead: RoaringTreemap,
        keep_delta: bool,
        pacer: &Pacer,
    ) -> Result<bool> {
        let parent = self.state().header.epochs.get(&e).and_then(|m| m.parent);
        let (geo, id) = (self.inner.geo, self.inner.id.clone());
        let grains = ed.data.len() + ed.zero.len();
        let already_empty = grains == 0;
        let plan = cpu(grains, move || {
            punch_plan(geo, &id, e, parent, &ed, &dead, keep_delta)
        })
        .await??;
        let Some(PunchPlan {
            trimmed,
            ops,
            record,
        }) = plan
        else {
            return Ok(already_empty);
        };
        self.unpack(e).await?;
        let backend = self.inner.backend.clone();
        stream::iter(ops)
            .map(|(oid, op)| {
                let backend = backend.clone();
                async move {
                    pacer.op().await;
                    backend.operate(&oid, op).await.or_absent().map(|_| ())
                }
            })
            .buffer_unordered(DELETE_PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        pacer.op().await;
        backend
            .operate(
                &layout::epoch_object(&self.inner.id, e),
                WriteOp::new().write_full(record),
            )
            .await?;
        let empty = trimmed.data.is_empty() && trimmed.zero.is_empty();
        let trimmed = Arc::new(trimmed);
        let id = &self.inner.id;
        let mut st = self.state();
        st.deltas.insert(e, trimmed.clone());
        let chain = &mut st.chain;
        for l in &mut chain.links {
            if chain
                .sources
                .get(l.source as usize)
                .is_some_and(|(i, x)| i == id && *x == e)
            {
                l.delta = trimmed.clone();
            }
        }
        Ok(empty)
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
        self.commit_header(&mut header, vec![]).await?;
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

fn head_own_len(chain: &crate::lineage::Chain) -> u64 {
    chain
        .links
        .first()
        .map_or(0, |l| l.delta.data.len() + l.delta.zero.len())
}

/// The head's own grains, copied for [`dead_grains`]: all it mentions, and
/// those that are changes (not defragmentation's moved copies).
#[derive(Default)]
pub(crate) struct HeadOwn {
    all: RoaringTreemap,
    changed: RoaringTreemap,
}

/// The grains `d` changes: its zeros and its data except moved copies.
fn changes(d: &EpochDelta) -> RoaringTreemap {
    &(&d.data - &d.moved) | &d.zero
}

/// Grains of each hidden epoch that nothing needs any more: every view
/// (the head, a snapshot) whose path passes through the epoch meets a
/// newer version first, and so does every diff base (snapshot or
/// bookmark) below it. A diff from base X to view V unions the changes on
/// the paths from X and V up to their common ancestor; since X and V are
/// both below any epoch on those paths, a grain dropped from one epoch's
/// delta is still changed in the delta of a lower epoch on the same path,
/// and the lowest such epoch is a base or a view, whose delta is never
/// trimmed.
///
/// Defragmentation's moved grains (defrag.rs) hide older versions from
/// reads but are no change, so diffs cannot rely on them: where a diff
/// can cross the epoch (some view or base lies outside its subtree), only
/// newer *changes* make its grains dead. Every epoch below such an epoch
/// is such an epoch too, so the changes that stand in for a dropped grain
/// are never themselves dropped for a moved copy. Elsewhere no diff
/// crosses the epoch, and any newer version will do.
/// Children are visited before parents (a parent's number is smaller).
/// Pure CPU over a copy of the lineage (`Image::lineage_copy`), so it can
/// run off the runtime's workers.
fn dead_grains(
    header: &HeaderRecord,
    deltas: &HashMap<Epoch, Arc<EpochDelta>>,
    head_own: HeadOwn,
) -> BTreeMap<Epoch, RoaringTreemap> {
    let crossed = crossed_by_diffs(header);
    let mut by_version = shadowed(header, deltas, head_own.all, |d| &d.data | &d.zero);
    let mut by_change = shadowed(header, deltas, head_own.changed, changes);
    let mut dead = BTreeMap::new();
    for e in header.epochs.keys() {
        let from = if crossed.contains(e) {
            &mut by_change
        } else {
            &mut by_version
        };
        if let Some(d) = from.remove(e) {
            dead.insert(*e, d);
        }
    }
    dead
}

/// Epochs some diff can cross: a view (head, snapshot) or base (snapshot,
/// bookmark) lies outside their subtree.
fn crossed_by_diffs(header: &HeaderRecord) -> BTreeSet<Epoch> {
    let ends: BTreeSet<Epoch> = std::iter::once(header.head)
        .chain(header.snapshots.iter().map(|s| s.epoch))
        .chain(header.bookmarks.iter().map(|b| b.epoch))
        .collect();
    let mut inside: HashMap<Epoch, usize> = HashMap::new();
    let mut crossed = BTreeSet::new();
    for (&e, m) in header.epochs.iter().rev() {
        let n = inside.remove(&e).unwrap_or(0) + usize::from(ends.contains(&e));
        if n < ends.len() {
            crossed.insert(e);
        }
        if let Some(p) = m.parent {
            *inside.entry(p).or_default() += n;
        }
    }
    crossed
}

/// Per hidden epoch, the grains every view and base in its subtree finds
/// a newer version of first, a version being what `own` says an epoch's
/// delta holds (`head_own` for the open head).
fn shadowed(
    header: &HeaderRecord,
    deltas: &HashMap<Epoch, Arc<EpochDelta>>,
    head_own: RoaringTreemap,
    own: impl Fn(&EpochDelta) -> RoaringTreemap,
) -> BTreeMap<Epoch, RoaringTreemap> {
    let views: BTreeSet<Epoch> = std::iter::once(header.head)
        .chain(header.snapshots.iter().map(|s| s.epoch))
        .collect();
    let bookmarked: BTreeSet<Epoch> = header.bookmarks.iter().map(|b| b.epoch).collect();
    let mut children: HashMap<Epoch, Vec<Epoch>> = HashMap::new();
    for (c, m) in &header.epochs {
        if let Some(p) = m.parent {
            children.entry(p).or_default().push(*c);
        }
    }
    let mut head_own = Some(head_own);
    // Per epoch: grains that every view and base in its subtree finds at
    // or below it; absent when none passes through it. A child's entry is
    // taken by its (only) parent.
    let mut below: HashMap<Epoch, RoaringTreemap> = HashMap::new();
    let mut dead = BTreeMap::new();
    for &e in header.epochs.keys().rev() {
        let kids: Vec<RoaringTreemap> = children
            .get(&e)
            .map(|cs| cs.iter().filter_map(|c| below.remove(c)).collect())
            .unwrap_or_default();
        let shadowed = intersect(kids.iter());
        let mut own = if e == header.head {
            match head_own.take() {
                Some(own) => own,
                None => continue,
            }
        } else {
            match deltas.get(&e) {
                Some(d) => own(d),
                None => continue,
            }
        };
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

/// What a punch of one hidden epoch does.
struct PunchPlan {
    /// The epoch's delta afterwards.
    trimmed: EpochDelta,
    /// One op per data object: zero runs and drop grain keys, or remove.
    ops: Vec<(String, WriteOp)>,
    /// The rewritten record.
    record: Bytes,
}

/// Plans the punch of hidden epoch `e`'s grains in `dead` (`None`: none of
/// them is still its own). Pure CPU.
fn punch_plan(
    geo: Geometry,
    id: &ImageId,
    e: Epoch,
    parent: Option<Epoch>,
    ed: &EpochDelta,
    dead: &RoaringTreemap,
    keep_delta: bool,
) -> Result<Option<PunchPlan>> {
    let mut mine = &ed.data - &ed.reclaimed;
    if !keep_delta {
        mine |= &ed.zero;
    }
    let superseded = mine & dead;
    if superseded.is_empty() {
        return Ok(None);
    }
    let gs = geo.grain_size;
    let gpo = u64::from(geo.grains_per_object());
    let mut trimmed = ed.clone();
    trimmed.data -= &superseded;
    trimmed.data -= &ed.reclaimed;
    trimmed.zero -= &superseded;
    trimmed.moved &= &trimmed.data;
    let gone_data = &ed.data & &superseded;
    let mut ops = Vec::new();
    for o in ed.touched.iter() {
        let first = o * gpo;
        let remaining = trimmed.data.range_cardinality(first..first + gpo);
        let oid = layout::data_object(id, ObjectNo(o), e);
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
        let keys = gone
            .iter()
            .map(|g| layout::grain_key((g - first) as u32))
            .collect();
        ops.push((oid, op.action(Action::OmapRemove(keys))));
    }
    if keep_delta {
        let mut kept = ed.clone();
        kept.reclaimed |= &gone_data;
        kept.touched = trimmed.touched;
        trimmed = kept;
    }
    let record = Bytes::from(trimmed.encode(id, e, parent)?);
    Ok(Some(PunchPlan {
        trimmed,
        ops,
        record,
    }))
}

/// The intersection of some bitmaps; `None` for none at all.
fn intersect<'a>(mut sets: impl Iterator<Item = &'a RoaringTreemap>) -> Option<RoaringTreemap> {
    let mut out = sets.next()?.clone();
    for s in sets {
        out &= s;
    }
    Some(out)
}

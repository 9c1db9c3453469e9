//! An open image: the read/write path and the handle's in-memory state.
//!
//! One [`Image`] handle owns a writable image (it holds the image's exclusive
//! lock); any number of read-only handles may read snapshots. Inside a handle,
//! I/O runs concurrently: a read takes the *gate* shared, resolves grains from
//! the in-memory epoch deltas and issues one backend read per run of grains
//! stored together; a write takes the gate shared and an exclusive lock on its
//! grain range, and issues one atomic backend op per object it touches (data
//! plus the grain-state omap keys). Metadata transitions (snapshot, rollback,
//! resize, reclaim) take the gate exclusively, so they fall between
//! acknowledged writes. The state mutex is never held across an `.await`.

use crate::backend::ext::BackendExt;
use crate::backend::{Action, Backend, Guard, WriteOp};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{Epoch, ImageId, ObjectNo, SnapId};
use crate::layout::{self, Geometry};
use crate::lineage::{Chain, Link, Loc, FIRST_SOURCE};
use crate::range_lock::RangeLock;
use crate::read_plan;
use crate::records::{EpochDelta, HeaderRecord};
use bytes::{Bytes, BytesMut};
use futures::future::{join_all, try_join_all};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::OnceCell;

/// xattr on the header naming the current owner's cookie; every metadata
/// commit is guarded by it, so a client that lost ownership cannot commit.
pub(crate) const OWNER_XATTR: &str = "rbd_row.owner";
/// Grain-state omap value: the grain's data is stored in this object.
pub(crate) const GRAIN_DATA: &[u8] = b"D";
/// Grain-state omap value: the grain reads as zeros from this epoch on.
pub(crate) const GRAIN_ZERO: &[u8] = b"Z";
/// Grain-state omap value: the grain's data is stored in this object, a
/// copy of what the epoch's parent path held (defrag.rs; `moved` in the
/// delta): no change for diffs.
pub(crate) const GRAIN_MOVED: &[u8] = b"M";

/// What a handle looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// The writable head.
    Head,
    /// The head as of opening, read-only and without ownership (what `rbd`
    /// uses for `diff`, `export` or `du` of an image another client writes).
    /// Grains the owner rewrites in place afterwards may read new or old.
    HeadReadOnly,
    /// A snapshot, read-only.
    Snapshot {
        /// Its id.
        id: SnapId,
        /// Its name when opened.
        name: String,
    },
}

/// Tunables of an open handle.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Upper bound on cached per-object resolutions (4 bytes per grain each).
    pub max_cached_objects: usize,
    /// How long an owner may take to answer a liveness probe before it is
    /// considered dead, fenced and replaced.
    pub owner_timeout: std::time::Duration,
    /// How long a request forwarded to the owner may take.
    pub request_timeout: std::time::Duration,
    /// How long the control task waits, idle, before a background reclaim
    /// pass after a transition that made garbage or hidden epochs.
    pub reclaim_delay: std::time::Duration,
    /// Upper bound on the reclaimer's backend ops per second (0: none).
    pub reclaim_ops_per_sec: u32,
    /// The owner checkpoints the head in the background once this many
    /// objects were registered in it since the last checkpoint (0: never
    /// by count). Open lists the grain omaps of at most about this many
    /// objects (plus those of `checkpoint_interval`), whatever was written
    /// since the last snapshot; each checkpoint makes the next write to
    /// every object register again (one batched header op).
    pub checkpoint_objects: u64,
    /// The owner also checkpoints the head this long after the last one
    /// when anything was registered since (zero: never by time).
    pub checkpoint_interval: std::time::Duration,
    /// The owner copies sealed epoch records into the header's omap
    /// (pack.rs) in the background once this many are not packed yet (0:
    /// never); open lists that pack and reads only the records it lacks.
    pub pack_min_epochs: usize,
    /// An owned head runs a background defragmentation pass (defrag.rs)
    /// this long after the previous one ended (zero, the default: never).
    pub defrag_interval: std::time::Duration,
    /// What the background passes rewrite and how fast.
    pub defrag: crate::defrag::DefragOptions,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            max_cached_objects: 65536,
            owner_timeout: std::time::Duration::from_secs(5),
            request_timeout: std::time::Duration::from_secs(60),
            reclaim_delay: std::time::Duration::from_millis(20),
            reclaim_ops_per_sec: 0,
            checkpoint_objects: 4096,
            checkpoint_interval: std::time::Duration::from_secs(30),
            pack_min_epochs: 64,
            defrag_interval: std::time::Duration::ZERO,
            defrag: crate::defrag::DefragOptions {
                min_reads: 8,
                bytes_per_sec: 16 << 20,
            },
        }
    }
}

pub(crate) struct State {
    pub(crate) header: HeaderRecord,
    /// Records of the image's own sealed epochs.
    pub(crate) deltas: HashMap<Epoch, Arc<EpochDelta>>,
    /// The view's path; for the head view, `links[0]` is the open epoch.
    pub(crate) chain: Chain,
    /// Links into parent images (clones), oldest part of every chain.
    pub(crate) parent_links: Vec<Link>,
    /// Registration of objects in the open epoch.
    pub(crate) touched: HashMap<ObjectNo, Arc<OnceCell<()>>>,
    /// Per-object resolutions.
    pub(crate) cache: HashMap<ObjectNo, Vec<Loc>>,
    /// Size of the view in bytes.
    pub(crate) size: u64,
    /// Registration generations of the open epoch (checkpoint.rs).
    pub(crate) gens: crate::checkpoint::Generations,
    /// Sealed epochs with a pack entry (pack.rs): exact for the owner, the
    /// only writer of entries.
    pub(crate) packed: std::collections::BTreeSet<Epoch>,
    /// Sealed epochs whose records are too large to pack.
    pub(crate) unpackable: std::collections::BTreeSet<Epoch>,
}

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) id: ImageId,
    pub(crate) geo: Geometry,
    pub(crate) view: View,
    pub(crate) cookie: Option<String>,
    pub(crate) gate: tokio::sync::RwLock<()>,
    /// Generations of data-path requests, for the reclaimer (grace.rs).
    pub(crate) grace: crate::grace::Grace,
    pub(crate) ranges: RangeLock,
    pub(crate) state: Mutex<State>,
    pub(crate) poisoned: Mutex<Option<String>>,
    pub(crate) options: ImageOptions,
    pub(crate) watch_id: Mutex<Option<u64>>,
    pub(crate) touch_batch: Mutex<TouchBatch>,
    /// Where jobs for the control task go (owned heads only; see control.rs).
    pub(crate) control:
        Mutex<Option<tokio::sync::mpsc::UnboundedSender<crate::control::ControlMsg>>>,
    /// A transition left work for the background reclaimer.
    pub(crate) reclaim_wanted: std::sync::atomic::AtomicBool,
    /// A background checkpoint is queued on the control task.
    pub(crate) checkpoint_wanted: std::sync::atomic::AtomicBool,
}

/// Registrations waiting for the next header op (see `register_touch`).
#[derive(Default)]
pub(crate) struct TouchBatch {
    queue: Vec<(
        Epoch,
        u64,
        ObjectNo,
        tokio::sync::oneshot::Sender<Result<()>>,
    )>,
    leader_active: bool,
}

/// An open image (head or snapshot). Cheap to clone; clones share one owner.
#[derive(Clone)]
pub struct Image {
    pub(crate) inner: Arc<Inner>,
}

/// Static facts about an open image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Stable id.
    pub id: ImageId,
    /// Name.
    pub name: String,
    /// Size of this view in bytes.
    pub size: u64,
    /// Bytes per object.
    pub object_size: u64,
    /// Bytes per grain.
    pub grain_size: u64,
    /// Number of snapshots.
    pub snapshot_count: usize,
    /// Parent (image id, snapshot id, overlap) for clones.
    pub parent: Option<(ImageId, SnapId, u64)>,
    /// Creation time (seconds since the Unix epoch).
    pub created_secs: u64,
}

pub(crate) enum Fill {
    Data(Bytes),
    /// Data the view already reads, rewritten (defrag.rs): the grains in
    /// the set are copies of what the parent path holds (`moved`), the
    /// others already belong to this epoch.
    Copy(Bytes, roaring::RoaringTreemap),
    Zero,
}

impl Image {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Geometry of the image.
    pub fn geometry(&self) -> Geometry {
        self.inner.geo
    }

    /// The image id.
    pub fn id(&self) -> &ImageId {
        &self.inner.id
    }

    /// What this handle looks at.
    pub fn view(&self) -> &View {
        &self.inner.view
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.inner.view != View::Head
    }

    /// Current size of the view in bytes.
    pub fn size(&self) -> u64 {
        self.state().size
    }

    /// Facts about the image.
    pub fn info(&self) -> ImageInfo {
        let st = self.state();
        ImageInfo {
            id: self.inner.id.clone(),
            name: st.header.name.clone(),
            size: st.size,
            object_size: self.inner.geo.object_size,
            grain_size: self.inner.geo.grain_size,
            snapshot_count: st.header.snapshots.len(),
            parent: st
                .header
                .parent
                .as_ref()
                .map(|p| (p.image.clone(), p.snap, p.overlap)),
            created_secs: st.header.created.secs,
        }
    }

    /// A copy of the header as this handle last committed or read it.
    pub fn header(&self) -> HeaderRecord {
        self.state().header.clone()
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
        let p = self
            .inner
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*p {
            Some(why) => Err(Error::new(
                ErrorKind::Fenced,
                format!(
                    "image handle is unusable after an earlier failure ({why}); reopen the image"
                ),
            )),
            None => Ok(()),
        }
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        self.check_usable()?;
        if self.is_read_only() {
            return Err(Error::read_only("snapshots are read-only"));
        }
        Ok(())
    }

    /// Marks the handle unusable after a metadata write whose outcome is
    /// unknown; returns the error for `?`.
    /// Applies `actions` to the header object in one op guarded by this
    /// handle's owner cookie. A guard that fails means another client took
    /// the image: the handle is poisoned and the error is `Fenced`. Other
    /// errors come back as they are, for the caller to judge.
    pub(crate) async fn owner_header_op(&self, actions: Vec<Action>) -> Result<()> {
        let cookie = self.inner.cookie.clone().unwrap_or_default();
        let mut op =
            WriteOp::new().guard(Guard::XattrEquals(OWNER_XATTR.into(), Bytes::from(cookie)));
        op.actions = actions;
        self.inner
            .backend
            .operate(&layout::header_object(&self.inner.id), op)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::PreconditionFailed => self.poison(Error::new(
                    ErrorKind::Fenced,
                    "another client took ownership of the image",
                )),
                _ => e,
            })
    }

    pub(crate) fn poison(&self, e: Error) -> Error {
        let mut p = self
            .inner
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if p.is_none() {
            tracing::error!(image = %self.inner.id, error = %e, "poisoning image handle");
            *p = Some(e.message().to_string());
        }
        e
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::invalid(format!(
                "range {offset}+{len} is outside the image (size {size})"
            ))),
        }
    }

    /// Per-object pieces `(object, image offset, length)` of a byte range.
    fn pieces(&self, offset: u64, len: u64) -> Vec<(ObjectNo, u64, u64)> {
        let os = self.inner.geo.object_size;
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let o = pos / os;
            let piece_end = ((o + 1) * os).min(end);
            out.push((ObjectNo(o), pos, piece_end - pos));
            pos = piece_end;
        }
        out
    }

    /// The resolution of grains `[g0, g1)` of object `o` (all in that object).
    pub(crate) fn locs(
        &self,
        o: ObjectNo,
        g0: u64,
        g1: u64,
    ) -> (Vec<Loc>, Arc<Vec<(ImageId, Epoch)>>) {
        let geo = self.inner.geo;
        let first = geo.first_grain(o);
        let mut st = self.state();
        if !st.cache.contains_key(&o) {
            if st.cache.len() >= self.inner.options.max_cached_objects {
                // Drop an arbitrary half: cheap, and a miss costs only CPU.
                let keep = st.cache.len() / 2;
                let victims: Vec<ObjectNo> = st.cache.keys().skip(keep).copied().collect();
                for v in victims {
                    st.cache.remove(&v);
                }
            }
            let resolved = st.chain.resolve_object(&geo, o);
            st.cache.insert(o, resolved);
        }
        let locs = st
            .cache
            .get(&o)
            .map(|v| v[(g0 - first) as usize..(g1 - first) as usize].to_vec())
            .unwrap_or_default();
        (locs, st.chain.sources.clone())
    }

    /// The gate, shared, plus a token of the current request generation
    /// (grace.rs): what every data-path request holds while it runs.
    pub(crate) async fn shared_gate(
        &self,
    ) -> (
        tokio::sync::RwLockReadGuard<'_, ()>,
        crate::grace::GraceToken,
    ) {
        let gate = self.inner.gate.read().await;
        (gate, self.inner.grace.enter())
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        self.check_usable()?;
        let _gate = self.shared_gate().await;
        // Checked under the gate: a resize may have been queued before us.
        self.check_range(offset, len)?;
        self.read_unlocked(offset, len).await
    }

    /// Runs a mutation of the data path in a task of its own and waits for
    /// it. The task holds the gate until every backend op it issued has
    /// completed and been noted, even when the caller drops this future (a
    /// client disconnect, a timeout): a submitted op lands regardless, and
    /// it must land before any snapshot seals its epoch.
    async fn detached<F>(&self, work: F) -> Result<()>
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        self.detached_value(work).await
    }

    /// [`Image::detached`] for work that returns a value.
    pub(crate) async fn detached_value<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        tokio::spawn(work)
            .await
            .map_err(|e| Error::io(format!("data-path task failed: {e}")))?
    }

    /// Waits for every piece, then returns the first error. Never drops a
    /// piece whose op may still be in flight.
    async fn join_pieces<F>(pieces: Vec<F>) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        join_all(pieces).await.into_iter().collect()
    }

    /// The read path without the gate (callers hold it). A data object the
    /// map names but the store no longer has means another client changed
    /// the map under this handle (refresh.rs): reload it and read again.
    pub(crate) async fn read_unlocked(&self, offset: u64, len: u64) -> Result<Bytes> {
        let (bytes, missing) = self.read_mapped(offset, len).await?;
        if !missing {
            return Ok(bytes);
        }
        self.refresh_map().await?;
        let (bytes, missing) = self.read_mapped(offset, len).await?;
        if missing {
            tracing::warn!(image = %self.inner.id, offset, len, "a mapped data object is missing; its grains read as zeros");
        }
        Ok(bytes)
    }

    /// Reads through the current map; also says whether a mapped data
    /// object was missing (its grains then read as zeros).
    async fn read_mapped(&self, offset: u64, len: u64) -> Result<(Bytes, bool)> {
        let len_usize = usize::try_from(len).map_err(|_| Error::invalid("read too large"))?;
        let mut buf = BytesMut::zeroed(len_usize);
        let gs = self.inner.geo.grain_size;
        let mut reads = Vec::new();
        for (o, poff, plen) in self.pieces(offset, len) {
            let g0 = poff / gs;
            let g1 = (poff + plen).div_ceil(gs);
            let (locs, sources) = self.locs(o, g0, g1);
            let obj_start = o.0 * self.inner.geo.object_size;
            let clip = |i: usize| ((g0 + i as u64) * gs).clamp(poff, poff + plen);
            for span in read_plan::plan(&locs, read_plan::max_gap(gs)) {
                let (a, b) = (clip(span.first), clip(span.end));
                // (where in `buf`, where in the span's bytes, how many)
                let copies: Vec<(usize, usize, usize)> = span
                    .runs
                    .iter()
                    .map(|&(i, j)| {
                        let (ra, rb) = (clip(i), clip(j));
                        (
                            (ra - offset) as usize,
                            (ra - a) as usize,
                            (rb - ra) as usize,
                        )
                    })
                    .collect();
                let (img, ep) = &sources[(span.loc - FIRST_SOURCE) as usize];
                let name = layout::data_object(img, o, *ep);
                let backend = self.inner.backend.clone();
                reads.push(async move {
                    match backend.read(&name, a - obj_start, b - a).await {
                        Ok(bytes) => Ok((copies, Some(bytes))),
                        Err(e) if e.kind() == ErrorKind::NotFound => Ok((copies, None)),
                        Err(e) => Err(e.context(format!("reading {name}"))),
                    }
                });
            }
        }
        let mut missing = false;
        for (copies, bytes) in try_join_all(reads).await? {
            let Some(bytes) = bytes else {
                missing = true;
                continue;
            };
            // A short read (the object ends early) leaves zeros.
            for (at, from, n) in copies {
                let n = n.min(bytes.len().saturating_sub(from));
                buf[at..at + n].copy_from_slice(&bytes[from..from + n]);
            }
        }
        Ok((buf.freeze(), missing))
    }

    /// Writes `data` at `offset`. Sub-grain edges cost a read-modify-write of
    /// the grain.
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<()> {
        self.check_writable()?;
        let img = self.clone();
        self.detached(async move {
            let _gate = img.shared_gate().await;
            img.check_range(offset, data.len() as u64)?;
            let mut jobs = Vec::new();
            for (o, poff, plen) in img.pieces(offset, data.len() as u64) {
                let start = (poff - offset) as usize;
                let piece = data.slice(start..start + plen as usize);
                jobs.push(img.write_piece(o, poff, plen, Fill::Data(piece)));
            }
            Self::join_pieces(jobs).await
        })
        .await
    }

    /// Writes `data` at `offset` and makes it durable before returning (FUA).
    pub async fn write_durable(&self, offset: u64, data: Bytes) -> Result<()> {
        self.write(offset, data).await?;
        self.flush().await
    }

    /// Discards a range: it reads back as zeros (as rbd discard does).
    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_range(offset, len).await
    }

    /// Writes zeros over a range, unmapping whole grains.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_range(offset, len).await
    }

    async fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        let img = self.clone();
        self.detached(async move {
            let _gate = img.shared_gate().await;
            img.check_range(offset, len)?;
            img.zero_range_unlocked(offset, len).await
        })
        .await
    }

    /// Zeroes a range; the caller holds the gate and keeps this future alive.
    pub(crate) async fn zero_range_unlocked(&self, offset: u64, len: u64) -> Result<()> {
        let jobs: Vec<_> = self
            .pieces(offset, len)
            .into_iter()
            .map(|(o, poff, plen)| self.write_piece(o, poff, plen, Fill::Zero))
            .collect();
        Self::join_pieces(jobs).await
    }

    /// Makes every acknowledged write durable.
    pub async fn flush(&self) -> Result<()> {
        self.check_usable()?;
        self.inner.backend.flush().await
    }

    /// Writes one object's piece of a request: one backend op.
    async fn write_piece(&self, o: ObjectNo, poff: u64, plen: u64, fill: Fill) -> Result<()> {
        let gs = self.inner.geo.grain_size;
        let _range = self
            .inner
            .ranges
            .lock(poff / gs, (poff + plen).div_ceil(gs))
            .await;
        self.write_piece_locked(o, poff, plen, fill).await
    }

    /// Copies grains `[g0, g1)` of object `o` that still read through to a
    /// parent image into this image (flatten), under the range lock so a
    /// concurrent client write is never overwritten with parent data.
    pub(crate) async fn copy_up(&self, o: ObjectNo, g0: u64, g1: u64) -> Result<()> {
        let img = self.clone();
        self.detached(async move { img.copy_up_detached(o, g0, g1).await })
            .await
    }

    async fn copy_up_detached(&self, o: ObjectNo, g0: u64, g1: u64) -> Result<()> {
        let gs = self.inner.geo.grain_size;
        let _gate = self.shared_gate().await;
        let _range = self.inner.ranges.lock(g0, g1).await;
        let (locs, sources) = self.locs(o, g0, g1);
        let size = self.size();
        let from_parent =
            |l: Loc| l >= FIRST_SOURCE && sources[(l - FIRST_SOURCE) as usize].0 != self.inner.id;
        for (i, j) in crate::lineage::runs_where(&locs, from_parent) {
            let off = (g0 + i as u64) * gs;
            let end = ((g0 + j as u64) * gs).min(size);
            if off >= end {
                break;
            }
            let data = self.read_unlocked(off, end - off).await?;
            self.write_piece_locked(o, off, end - off, Fill::Data(data))
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn write_piece_locked(
        &self,
        o: ObjectNo,
        poff: u64,
        plen: u64,
        fill: Fill,
    ) -> Result<()> {
        let geo = self.inner.geo;
        let gs = geo.grain_size;
        let g0 = poff / gs;
        let g1 = (poff + plen).div_ceil(gs);
        let obj_start = o.0 * geo.object_size;
        let first_grain = geo.first_grain(o);
        let span_start = g0 * gs;
        let span_end = g1 * gs;
        let mut actions = Vec::new();
        let mut data_grains: Vec<u64> = Vec::new();
        let mut zero_grains: Vec<u64> = Vec::new();
        let moved = match &fill {
            Fill::Copy(_, copied) => copied.clone(),
            _ => roaring::RoaringTreemap::new(),
        };
        match fill {
            Fill::Data(bytes) | Fill::Copy(bytes, _) => {
                let buf = if poff == span_start && poff + plen == span_end {
                    bytes
                } else {
                    let mut buf = BytesMut::zeroed((span_end - span_start) as usize);
                    self.fill_edges(&mut buf, span_start, poff, plen).await?;
                    let at = (poff - span_start) as usize;
                    buf[at..at + bytes.len()].copy_from_slice(&bytes);
                    buf.freeze()
                };
                actions.push(Action::Write {
                    offset: span_start - obj_start,
                    data: buf,
                });
                data_grains.extend(g0..g1);
            }
            Fill::Zero => {
                let (locs, _) = self.locs(o, g0, g1);
                let full0 = poff.div_ceil(gs);
                let full1 = (poff + plen) / gs;
                // Partial edge grains: zero the covered bytes by rewriting the grain.
                let mut edges = vec![g0];
                if g1 - 1 != g0 {
                    edges.push(g1 - 1);
                }
                let size = self.size();
                for g in edges {
                    let partial = g < full0 || g >= full1;
                    if !partial || locs[(g - g0) as usize] < FIRST_SOURCE {
                        continue; // whole grain, or already reads as zeros
                    }
                    let readable = gs.min(size.saturating_sub(g * gs));
                    let mut grain =
                        BytesMut::from(&self.read_unlocked(g * gs, readable).await?[..]);
                    grain.resize(gs as usize, 0);
                    let a = poff.max(g * gs) - g * gs;
                    let b = (poff + plen).min((g + 1) * gs) - g * gs;
                    grain[a as usize..b as usize].fill(0);
                    actions.push(Action::Write {
                        offset: g * gs - obj_start,
                        data: grain.freeze(),
                    });
                    data_grains.push(g);
                }
                // Whole grains that currently hold data become zero tombstones.
                let mut g = full0;
                while g < full1 {
                    if locs[(g - g0) as usize] < FIRST_SOURCE {
                        g += 1;
                        continue;
                    }
                    let run_start = g;
                    while g < full1 && locs[(g - g0) as usize] >= FIRST_SOURCE {
                        zero_grains.push(g);
                        g += 1;
                    }
                    actions.push(Action::Zero {
                        offset: run_start * gs - obj_start,
                        len: (g - run_start) * gs,
                    });
                }
            }
        }
        if actions.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(data_grains.len() + zero_grains.len());
        for &g in &data_grains {
            let state = if moved.contains(g) {
                GRAIN_MOVED
            } else {
                GRAIN_DATA
            };
            keys.push((
                layout::grain_key((g - first_grain) as u32),
                Bytes::from_static(state),
            ));
        }
        for &g in &zero_grains {
            keys.push((
                layout::grain_key((g - first_grain) as u32),
                Bytes::from_static(GRAIN_ZERO),
            ));
        }
        actions.push(Action::OmapSet(keys.clone()));
        let head = self.ensure_touched(o).await?;
        let name = layout::data_object(&self.inner.id, o, head);
        let op = WriteOp {
            guards: vec![],
            actions,
        };
        let Err(e) = self.inner.backend.operate(&name, op).await else {
            self.note_written(o, head, &data_grains, &zero_grains, &moved);
            return Ok(());
        };
        let e = e.context(format!("writing {name}"));
        // The op may have landed although it reported an error (a lost
        // reply). It is atomic, so its grain keys say whether it did; memory
        // must follow the disk, or a later discard would skip a grain that
        // recovery will find.
        match self.op_landed(&name, &keys).await {
            Ok(true) => self.note_written(o, head, &data_grains, &zero_grains, &moved),
            Ok(false) => {}
            Err(why) => {
                return Err(self.poison(Error::new(
                    e.kind(),
                    format!("{e}; its outcome is unknown ({why})"),
                )))
            }
        }
        Err(e)
    }

    /// Whether a failed data op on `oid` landed: all of the grain keys it
    /// set hold its values.
    async fn op_landed(&self, oid: &str, keys: &[(String, Bytes)]) -> Result<bool> {
        let stored = match self.inner.backend.omap_all(oid, "").await {
            Ok(kv) => kv.into_iter().collect::<HashMap<String, Bytes>>(),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(keys.iter().all(|(k, v)| stored.get(k) == Some(v)))
    }

    /// Reads the partial first and last grains of a span for a read-modify-write.
    async fn fill_edges(
        &self,
        buf: &mut BytesMut,
        span_start: u64,
        poff: u64,
        plen: u64,
    ) -> Result<()> {
        let gs = self.inner.geo.grain_size;
        let size = self.size();
        let span_end = span_start + buf.len() as u64;
        let mut edges = Vec::new();
        if poff > span_start {
            edges.push(span_start);
        }
        if poff + plen < span_end && (edges.is_empty() || span_end - gs != span_start) {
            edges.push(span_end - gs);
        }
        for g_off in edges {
            let readable = gs.min(size.saturating_sub(g_off));
            if readable == 0 {
                continue;
            }
            let old = self.read_unlocked(g_off, readable).await?;
            let at = (g_off - span_start) as usize;
            buf[at..at + old.len()].copy_from_slice(&old);
        }
        Ok(())
    }

    /// Records the first write to object `o` in the open epoch in the header
    /// (once per object, epoch and registration generation), returning the
    /// open epoch.
    async fn ensure_touched(&self, o: ObjectNo) -> Result<Epoch> {
        let (cell, head, generation) = {
            let mut st = self.state();
            (
                st.touched.entry(o).or_default().clone(),
                st.header.head,
                st.gens.current,
            )
        };
        cell.get_or_try_init(|| self.register_touch(head, generation, o))
            .await?;
        Ok(head)
    }

    /// Queues the registration of object `o` in open epoch `head` and waits
    /// for it. Registrations queued while one header op is in flight ride
    /// together in the next one (a shared object must not take one op per
    /// client write), each followed by a flush: a data object whose
    /// registration was lost in a crash would otherwise be ignored by
    /// recovery and come back after a later one (free on RADOS).
    async fn register_touch(&self, head: Epoch, generation: u64, o: ObjectNo) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut b = self
                .inner
                .touch_batch
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            b.queue.push((head, generation, o, tx));
            !std::mem::replace(&mut b.leader_active, true)
        };
        if lead {
            // The leader runs in its own task so that a cancelled request
            // cannot strand the requests batched behind it.
            let image = self.clone();
            tokio::spawn(async move { image.run_touch_batches().await });
        }
        rx.await
            .map_err(|_| Error::io("registration batch was abandoned"))?
    }

    async fn run_touch_batches(&self) {
        loop {
            let batch = {
                let mut b = self
                    .inner
                    .touch_batch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if b.queue.is_empty() {
                    b.leader_active = false;
                    return;
                }
                std::mem::take(&mut b.queue)
            };
            let keys: Vec<(String, Bytes)> = batch
                .iter()
                .map(|(e, g, o, _)| (layout::touch_key_gen(*e, *g, *o), Bytes::new()))
                .collect();
            let mut result = self
                .owner_header_op(vec![Action::OmapSet(keys)])
                .await
                .map_err(|e| e.context("registering data objects"));
            if result.is_ok() {
                result = self.inner.backend.flush().await;
            }
            if result.is_ok() {
                let mut st = self.state();
                let head = st.header.head;
                let mut noted = 0;
                for (e, g, o, _) in &batch {
                    if *e == head {
                        st.gens.keys.entry(*g).or_default().insert(o.0);
                        noted += 1;
                    }
                }
                if let Some(link) = st.chain.links.first_mut() {
                    let d = Arc::make_mut(&mut link.delta);
                    for (e, _, o, _) in &batch {
                        if *e == head {
                            d.touched.insert(o.0);
                        }
                    }
                }
                drop(st);
                self.note_registrations(noted);
            }
            let failed = result.is_err();
            for (_, _, _, tx) in batch {
                let _ = tx.send(result.clone());
            }
            if failed {
                // Whatever made this batch fail (a timeout, lost ownership)
                // would fail the next one too: answer everything queued
                // behind it now instead of stacking up another timeout.
                let queued = {
                    let mut b = self
                        .inner
                        .touch_batch
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    std::mem::take(&mut b.queue)
                };
                for (_, _, _, tx) in queued {
                    let _ = tx.send(result.clone());
                }
            }
        }
    }

    /// Updates the open epoch's delta and the cached resolution after a
    /// write (`moved`: the data grains it copied unchanged).
    fn note_written(
        &self,
        o: ObjectNo,
        head: Epoch,
        data: &[u64],
        zero: &[u64],
        moved: &roaring::RoaringTreemap,
    ) {
        let geo = self.inner.geo;
        let first = geo.first_grain(o);
        let id = self.inner.id.clone();
        let mut st = self.state();
        if st.header.head != head {
            return;
        }
        let src = st.chain.source_index(&id, head) + FIRST_SOURCE;
        if let Some(link) = st.chain.links.first_mut() {
            let d = Arc::make_mut(&mut link.delta);
            for &g in data {
                d.zero.remove(g);
                d.data.insert(g);
                if moved.contains(g) {
                    d.moved.insert(g);
                } else {
                    d.moved.remove(g);
                }
            }
            for &g in zero {
                d.data.remove(g);
                d.moved.remove(g);
                d.zero.insert(g);
            }
        }
        if let Some(cached) = st.cache.get_mut(&o) {
            for &g in data {
                cached[(g - first) as usize] = src;
            }
            for &g in zero {
                cached[(g - first) as usize] = crate::lineage::ZERO;
            }
        }
    }
}

//! Defragmentation: rewriting the head's scattered grains into the head epoch.
//!
//! Redirect-on-write never overwrites data a snapshot can see, so after
//! random overwrites under many snapshots the grains the head sees of one
//! object lie in many epochs' data objects. A sequential read then costs
//! one backend read per epoch object it meets (`read_plan.rs`), where a
//! never-snapshotted image reads each object once: report row 4 measured
//! 0.09× the control after 256 snapshots.
//!
//! The defragmenter reads such an object through the head and writes its
//! data grains back through the ordinary write path, so they all land in
//! the open epoch's object and the next sequential read needs one backend
//! read per run. Nothing new is needed for crashes: each rewrite is a write
//! of the data the head already reads, under the object's range lock (a
//! client write to the object waits; it is never overwritten with older
//! data), under the shared gate (a snapshot falls between objects), and
//! atomic per object like any write. Holes and zeroed grains stay holes.
//!
//! A rewritten grain is recorded as *moved* (grain state `M`,
//! `EpochDelta::moved`): it resolves reads like any data grain but is no
//! change, so diffs and export-diff between two points list exactly what
//! they listed before, and an incremental backup does not grow because
//! the image was defragmented. The reclaimer lets a moved grain free the
//! older copy it hides only where no diff can cross that copy's epoch
//! (reclaim.rs, `dead_grains`).
//!
//! The price is space while snapshots still hold the old grains: they are
//! stored twice until those snapshots go, when the reclaimer frees the old
//! copies as it frees any superseded grain. So it runs only on objects
//! whose whole-object read takes at least [`DefragOptions::min_reads`]
//! backend reads, paced to [`DefragOptions::bytes_per_sec`]; `rbd-row
//! defrag` runs it once, and `ImageOptions::defrag_interval` runs it in the
//! background on an owned head.

use crate::error::{Error, ErrorKind, Result};
use crate::ids::{Epoch, ImageId, ObjectNo};
use crate::image::{Fill, Image, Inner};
use crate::lineage::{Loc, FIRST_SOURCE, UNALLOCATED};
use crate::read_plan;
use roaring::RoaringTreemap;
use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

/// What a defragmentation pass rewrites and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefragOptions {
    /// Rewrite an object when reading all of it takes at least this many
    /// backend reads (values below 2 count as 2: an object read in one
    /// already is as good as it gets).
    pub min_reads: usize,
    /// Upper bound on the bytes rewritten per second (0: unlimited).
    pub bytes_per_sec: u64,
}

impl Default for DefragOptions {
    fn default() -> Self {
        DefragOptions {
            min_reads: 4,
            bytes_per_sec: 0,
        }
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefragReport {
    /// Objects whose grains come from more than one data object, the only
    /// ones that can be fragmented: each was resolved and judged.
    pub objects_examined: u64,
    /// Objects rewritten.
    pub objects_rewritten: u64,
    /// Bytes written by the rewrites.
    pub bytes_rewritten: u64,
    /// Backend reads a whole-object read of the rewritten objects took
    /// before the pass, summed.
    pub reads_before: u64,
    /// The same after the pass.
    pub reads_after: u64,
}

/// What one object's rewrite did.
struct Rewrite {
    reads_before: usize,
    reads_after: usize,
    bytes: u64,
}

impl Image {
    /// Rewrites the head's fragmented objects (see the module docs) and
    /// says what it did. Client I/O goes on meanwhile; a snapshot, rollback
    /// or resize falls between two objects. Stops with an error when the
    /// handle is closed or poisoned meanwhile.
    pub async fn defragment(&self, opts: &DefragOptions) -> Result<DefragReport> {
        self.check_writable()?;
        self.check_controlled()?;
        run_pass(|| Some(self.clone()), opts).await
    }

    fn check_controlled(&self) -> Result<()> {
        if self.is_controlled() {
            return Ok(());
        }
        Err(Error::new(ErrorKind::Fenced, "the image handle is closed"))
    }

    /// The objects whose own grains take at least `min_reads` backend reads
    /// to read whole, in ascending order, and how many were examined (those
    /// two or more links of the path touched). Works on a copy of the
    /// chain on the blocking pool: the state mutex is held for the copy
    /// only.
    async fn fragmented_objects(&self, min_reads: usize) -> Result<(u64, Vec<ObjectNo>)> {
        let (chain, geo, id) = (
            self.state().chain.clone(),
            self.inner.geo,
            self.inner.id.clone(),
        );
        let work = move || {
            let mut seen: HashMap<u64, u32> = HashMap::new();
            for link in &chain.links {
                for o in link.delta.touched.iter() {
                    *seen.entry(o).or_default() += 1;
                }
            }
            let mut examined: Vec<ObjectNo> = (seen.into_iter())
                .filter(|&(_, n)| n >= 2)
                .map(|(o, _)| ObjectNo(o))
                .collect();
            examined.sort_unstable();
            let count = examined.len() as u64;
            let fragmented = (examined.into_iter())
                .filter(|&o| {
                    let locs = own_locs(chain.resolve_object(&geo, o), &chain.sources, &id);
                    reads_of(&locs, geo.grain_size) >= min_reads
                })
                .collect();
            (count, fragmented)
        };
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::io(format!("defragmentation planning failed: {e}")))
    }

    /// This image's own grains of object `o` now (the cached resolution,
    /// parent grains as holes) and the reads a whole-object read of them
    /// takes.
    fn own_object_locs(&self, o: ObjectNo) -> (Vec<Loc>, usize) {
        let geo = self.inner.geo;
        let first = geo.first_grain(o);
        let (locs, sources) = self.locs(o, first, first + u64::from(geo.grains_per_object()));
        let locs = own_locs(locs, &sources, &self.inner.id);
        let reads = reads_of(&locs, geo.grain_size);
        (locs, reads)
    }

    /// [`Image::rewrite_object`] in a task of its own (the rewrite must not
    /// be dropped half-way by a caller that goes away).
    async fn defragment_one(&self, o: ObjectNo, min_reads: usize) -> Result<Option<Rewrite>> {
        let img = self.clone();
        self.detached_value(async move { img.rewrite_object(o, min_reads).await })
            .await
    }

    /// Rewrites object `o` if reading its own grains takes at least
    /// `min_reads` backend reads, or leaves it alone (`None`). Holds the
    /// shared gate and the object's range lock throughout.
    async fn rewrite_object(&self, o: ObjectNo, min_reads: usize) -> Result<Option<Rewrite>> {
        let _gate = self.shared_gate().await;
        // Checked under the gate: `close` stops the control task before it
        // takes the gate, so no rewrite starts after the lock is released.
        self.check_writable()?;
        self.check_controlled()?;
        let geo = self.inner.geo;
        let first = geo.first_grain(o);
        let _range = (self.inner.ranges)
            .lock(first, first + u64::from(geo.grains_per_object()))
            .await;
        let (locs, reads_before) = self.own_object_locs(o);
        if reads_before < min_reads {
            return Ok(None);
        }
        let size = self.size();
        let gs = geo.grain_size;
        let copies = self.copied_grains(first, &locs);
        let mut bytes = 0;
        for (i, j) in data_runs(&locs) {
            let off = (first + i as u64) * gs;
            let end = ((first + j as u64) * gs).min(size);
            if off >= end {
                break;
            }
            let data = self.read_unlocked(off, end - off).await?;
            let fill = Fill::Copy(data, copies.clone());
            self.write_piece_locked(o, off, end - off, fill).await?;
            bytes += end - off;
        }
        let (_, reads_after) = self.own_object_locs(o);
        Ok(Some(Rewrite {
            reads_before,
            reads_after,
            bytes,
        }))
    }

    /// Of an object's grains from `first` on, resolved to `locs`, those a
    /// rewrite into the open epoch copies unchanged: every data grain that
    /// resolves elsewhere, and those of the open epoch that are copies
    /// already (an earlier pass). The open epoch's own changes stay changes.
    fn copied_grains(&self, first: u64, locs: &[Loc]) -> RoaringTreemap {
        let mut st = self.state();
        let head = st.header.head;
        let id = self.inner.id.clone();
        let head_loc = st.chain.source_index(&id, head) + FIRST_SOURCE;
        let head_moved = st.chain.links.first().map(|l| &l.delta.moved);
        (0u64..)
            .zip(locs)
            .filter(|&(i, &l)| {
                l >= FIRST_SOURCE
                    && (l != head_loc || head_moved.is_some_and(|m| m.contains(first + i)))
            })
            .map(|(i, _)| first + i)
            .collect()
    }
}

/// One pass over the image `image()` returns (None: the handle is gone,
/// and the pass ends). The background ticker holds only a weak reference
/// between objects, so a pass never keeps a dropped handle alive.
async fn run_pass(image: impl Fn() -> Option<Image>, opts: &DefragOptions) -> Result<DefragReport> {
    let min_reads = opts.min_reads.max(2);
    let Some(img) = image() else {
        return Ok(DefragReport::default());
    };
    let (examined, objects) = img.fragmented_objects(min_reads).await?;
    drop(img);
    let mut report = DefragReport {
        objects_examined: examined,
        ..DefragReport::default()
    };
    let started = tokio::time::Instant::now();
    for o in objects {
        let Some(img) = image() else { break };
        let Some(r) = img.defragment_one(o, min_reads).await? else {
            continue;
        };
        drop(img);
        report.objects_rewritten += 1;
        report.reads_before += r.reads_before as u64;
        report.reads_after += r.reads_after as u64;
        report.bytes_rewritten += r.bytes;
        pace(started, report.bytes_rewritten, opts.bytes_per_sec).await;
    }
    Ok(report)
}

/// A background pass of the handle behind `weak` with its own
/// `ImageOptions::defrag`, logged; a handle closed or dropped meanwhile
/// ends it quietly.
pub(crate) async fn background_pass(weak: &Weak<Inner>) {
    let upgrade = || weak.upgrade().map(|inner| Image { inner });
    let Some(img) = upgrade() else { return };
    if !img.is_controlled() || img.check_writable().is_err() {
        return;
    }
    let (opts, id) = (img.inner.options.defrag.clone(), img.inner.id.clone());
    drop(img);
    match run_pass(upgrade, &opts).await {
        Ok(r) if r.objects_rewritten > 0 => {
            tracing::info!(image = %id, objects = r.objects_rewritten,
                bytes = r.bytes_rewritten, reads_before = r.reads_before,
                reads_after = r.reads_after, "background defragmentation pass")
        }
        Ok(_) => {}
        Err(_) if upgrade().is_none_or(|i| !i.is_controlled()) => {}
        Err(e) => {
            tracing::warn!(image = %id, error = %e, "background defragmentation failed")
        }
    }
}

/// `locs` with every grain another image (a clone's parent) holds turned
/// into a hole: a pass rewrites only the image's own data, so a clone
/// never takes copies of its parent's.
fn own_locs(mut locs: Vec<Loc>, sources: &[(ImageId, Epoch)], id: &ImageId) -> Vec<Loc> {
    for l in &mut locs {
        if *l >= FIRST_SOURCE && sources[(*l - FIRST_SOURCE) as usize].0 != *id {
            *l = UNALLOCATED;
        }
    }
    locs
}

/// Backend reads a read of grains resolved to `locs` takes.
fn reads_of(locs: &[Loc], grain_size: u64) -> usize {
    read_plan::plan(locs, read_plan::max_gap(grain_size)).len()
}

/// Maximal runs `[i, j)` of grains that hold data.
fn data_runs(locs: &[Loc]) -> Vec<(usize, usize)> {
    crate::lineage::runs_where(locs, |l| l >= FIRST_SOURCE)
}

/// Sleeps until `bytes` written since `started` are within `bytes_per_sec`.
async fn pace(started: tokio::time::Instant, bytes: u64, bytes_per_sec: u64) {
    if bytes_per_sec == 0 {
        return;
    }
    let due = started + Duration::from_secs_f64(bytes as f64 / bytes_per_sec as f64);
    tokio::time::sleep_until(due).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::ZERO;

    #[test]
    fn data_runs_skip_holes_and_zeroed_grains() {
        let a = FIRST_SOURCE;
        let b = FIRST_SOURCE + 1;
        let locs = [UNALLOCATED, a, b, a, ZERO, b, UNALLOCATED, a];
        assert_eq!(data_runs(&locs), vec![(1, 4), (5, 6), (7, 8)]);
        assert!(data_runs(&[ZERO, UNALLOCATED]).is_empty());
        assert_eq!(data_runs(&[a, a]), vec![(0, 2)]);
    }
}

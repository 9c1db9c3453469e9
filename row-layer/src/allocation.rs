//! Range queries over the map for block-status callers: what a byte range of
//! the view holds ([`Image::allocation`]) and which of its grains changed
//! since a snapshot or bookmark ([`Image::changed_grains_in`]).
//!
//! Both answer from the in-memory map only (0 backend ops) and cost what the
//! requested range costs, never what the image costs:
//!
//! * `allocation` of a range up to one object size (what a sparse read asks
//!   before reading the same bytes) uses the read path's per-object
//!   resolution, cached or resolved and cached as a read would. A longer
//!   range takes, per object piece, the cached resolution if there is one
//!   (O(grains in the piece)), else walks each link's `data`/`zero` bitmaps
//!   over the piece only (`advance_to` the first grain, stop at the last:
//!   O(links × (log + grains mentioned in the piece))) without filling the
//!   cache, so mapping a whole image does not evict the read path's working
//!   set.
//! * `changed_grains_in` is [`Image::changed_grains`] restricted to a grain
//!   window: the same epochs (the base's path and the view's path back to
//!   their common ancestor), each bitmap walked over the window only.
//!
//! The state mutex is taken per object piece (allocation) or per
//! [`CHUNK_GRAINS`] window (changed grains), so a large query never holds it
//! for long. A query that races a write sees the grain before or after it.

use crate::error::{Error, Result};
use crate::ids::ObjectNo;
use crate::image::{Image, State};
use crate::lineage::{Chain, Loc, UNALLOCATED, ZERO};
use crate::records::EpochDelta;
use roaring::RoaringTreemap;
use std::collections::BTreeMap;

/// What a byte range of a view holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllocKind {
    /// Data is stored for these bytes (the data itself may be zeros).
    Data,
    /// Discarded, zeroed or cut off by a shrink: reads as zeros.
    Zero,
    /// Never written on the view's path: reads as zeros.
    Unallocated,
}

impl AllocKind {
    /// Whether the bytes read as zeros without looking at any data.
    pub fn reads_as_zeros(self) -> bool {
        self != AllocKind::Data
    }

    fn of(loc: Loc) -> Self {
        match loc {
            UNALLOCATED => AllocKind::Unallocated,
            ZERO => AllocKind::Zero,
            _ => AllocKind::Data,
        }
    }
}

/// One extent of [`Image::allocation`], in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocExtent {
    /// Byte offset.
    pub offset: u64,
    /// Byte length (never 0).
    pub length: u64,
    /// What the bytes hold.
    pub kind: AllocKind,
}

/// Grains per state-mutex hold in [`Image::changed_grains_in`].
pub const CHUNK_GRAINS: u64 = 1 << 14;

/// Appends `[a, b)` of `kind`, merging with an equal neighbour.
fn push(out: &mut Vec<AllocExtent>, a: u64, b: u64, kind: AllocKind) {
    if b <= a {
        return;
    }
    match out.last_mut() {
        Some(last) if last.kind == kind && last.offset + last.length == a => {
            last.length += b - a;
        }
        _ => out.push(AllocExtent {
            offset: a,
            length: b - a,
            kind,
        }),
    }
}

/// Grain runs `(first, end, kind)` covering `[g0, g1)`, resolved by walking
/// the chain's bitmaps over that window only (the newest link mentioning a
/// grain decides, as in `Chain::resolve_object`).
fn walk_window(chain: &Chain, g0: u64, g1: u64) -> Vec<(u64, u64, AllocKind)> {
    let want = (g1 - g0) as usize;
    let mut claims: BTreeMap<u64, AllocKind> = BTreeMap::new();
    for link in &chain.links {
        if claims.len() == want {
            break;
        }
        let end = g1.min(link.limit);
        if end <= g0 {
            continue;
        }
        for (bitmap, kind) in [
            (&link.delta.data, AllocKind::Data),
            (&link.delta.zero, AllocKind::Zero),
        ] {
            let mut it = bitmap.iter();
            it.advance_to(g0);
            for g in it {
                if g >= end {
                    break;
                }
                claims.entry(g).or_insert(kind);
            }
        }
    }
    let mut runs: Vec<(u64, u64, AllocKind)> = Vec::new();
    let mut add = |a: u64, b: u64, kind: AllocKind| {
        if b <= a {
            return;
        }
        match runs.last_mut() {
            Some(last) if last.2 == kind && last.1 == a => last.1 = b,
            _ => runs.push((a, b, kind)),
        }
    };
    let mut pos = g0;
    for (&g, &kind) in &claims {
        add(pos, g, AllocKind::Unallocated);
        add(g, g + 1, kind);
        pos = g + 1;
    }
    add(pos, g1, AllocKind::Unallocated);
    runs
}

/// Grain runs of a cached resolution slice starting at grain `g0`.
fn runs_of(locs: &[Loc], g0: u64) -> Vec<(u64, u64, AllocKind)> {
    let mut runs: Vec<(u64, u64, AllocKind)> = Vec::new();
    for (i, &loc) in locs.iter().enumerate() {
        let g = g0 + i as u64;
        let kind = AllocKind::of(loc);
        match runs.last_mut() {
            Some(last) if last.2 == kind => last.1 = g + 1,
            _ => runs.push((g, g + 1, kind)),
        }
    }
    runs
}

impl Image {
    /// `offset + len` if the range lies inside the view, else `InvalidInput`.
    fn range_end(&self, offset: u64, len: u64) -> Result<u64> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(end),
            _ => Err(Error::invalid(format!(
                "range {offset}+{len} is outside the image (size {size})"
            ))),
        }
    }

    /// What `[offset, offset + len)` of this view holds, as merged extents
    /// in order covering exactly the range (clipped to it at both ends; a
    /// grain is the unit, so a partially covered grain's kind applies to the
    /// covered bytes). 0 backend ops; CPU in the size of the range (see the
    /// module docs). An empty range gives no extents; a range past the end
    /// of the view is `InvalidInput`.
    ///
    /// A range of at most one object size is resolved the way a read of it
    /// is (and fills the resolution cache the same way), since a read of the
    /// same bytes usually follows (sparse NBD reads); a longer range (a
    /// block-status map) is walked without touching the cache.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<AllocExtent>> {
        self.allocation_with(offset, len, len <= self.inner.geo.object_size)
    }

    fn allocation_with(&self, offset: u64, len: u64, fill_cache: bool) -> Result<Vec<AllocExtent>> {
        self.check_usable()?;
        let end = self.range_end(offset, len)?;
        let geo = self.inner.geo;
        let (gs, os) = (geo.grain_size, geo.object_size);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let o = ObjectNo(pos / os);
            let piece_end = ((o.0 + 1) * os).min(end);
            let g0 = pos / gs;
            let g1 = piece_end.div_ceil(gs);
            let cached = {
                let st = self.state();
                match st.cache.get(&o) {
                    Some(cached) => {
                        let first = geo.first_grain(o);
                        Some(runs_of(
                            &cached[(g0 - first) as usize..(g1 - first) as usize],
                            g0,
                        ))
                    }
                    None if fill_cache => None,
                    None => Some(walk_window(&st.chain, g0, g1)),
                }
            };
            // A miss to fill: resolve and cache the object as a read does.
            let runs = cached.unwrap_or_else(|| runs_of(&self.locs(o, g0, g1).0, g0));
            for (a, b, kind) in runs {
                push(&mut out, (a * gs).max(pos), (b * gs).min(piece_end), kind);
            }
            pos = piece_end;
        }
        Ok(out)
    }

    /// The grains overlapping `[offset, offset + len)` that changed since
    /// snapshot or bookmark `from` up to this view: exactly
    /// [`Image::changed_grains`]`(Some(from)).0` restricted to those grains,
    /// computed over the window only (0 backend ops). Follows every write
    /// made through this handle. A range past the end of the view is
    /// `InvalidInput`; an unknown base `NotFound`.
    pub fn changed_grains_in(&self, from: &str, offset: u64, len: u64) -> Result<RoaringTreemap> {
        self.check_usable()?;
        let end = self.range_end(offset, len)?;
        let mut out = RoaringTreemap::new();
        if len == 0 {
            // Still report an unknown base.
            self.diff_base(from)?;
            return Ok(out);
        }
        let gs = self.inner.geo.grain_size;
        let (g0, g1) = (offset / gs, end.div_ceil(gs));
        let mut g = g0;
        while g < g1 {
            let ge = ((g / CHUNK_GRAINS + 1) * CHUNK_GRAINS).min(g1);
            let st = self.state();
            self.changed_window(&st, from, g, ge, &mut out)?;
            g = ge;
        }
        Ok(out)
    }

    /// Adds the grains of `[g0, g1)` changed since `from` to `out` (the
    /// computation of `changed_grains`, over a window).
    fn changed_window(
        &self,
        st: &State,
        from: &str,
        g0: u64,
        g1: u64,
        out: &mut RoaringTreemap,
    ) -> Result<()> {
        let (from_epoch, _) = crate::diff::base_of(&st.header, from)?;
        let g1 = g1.min(self.inner.geo.grains_for(st.size));
        if g1 <= g0 {
            return Ok(());
        }
        // An epoch's changes in the window: its zeros and its data except
        // the grains it holds as unchanged copies (`moved`, defrag.rs).
        let add = |out: &mut RoaringTreemap, d: &EpochDelta| {
            for (bitmap, skip) in [(&d.data, Some(&d.moved)), (&d.zero, None)] {
                let mut it = bitmap.iter();
                it.advance_to(g0);
                for g in it {
                    if g >= g1 {
                        break;
                    }
                    if !skip.is_some_and(|m| m.contains(g)) {
                        out.insert(g);
                    }
                }
            }
        };
        for d in crate::diff::deltas_since(st, &self.inner.id, from_epoch)? {
            add(out, d);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backend::fault::{FaultBackend, OpCounts};
    use crate::backend::mem::MemBackend;
    use crate::backend::Backend;
    use crate::error::ErrorKind;
    use crate::{CreateOptions, Store};
    use bytes::Bytes;
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    use std::sync::Arc;

    const GS: u64 = 4096;
    const OS: u64 = 64 << 10;

    fn kind_at(img: &Image, g: u64) -> AllocKind {
        let geo = img.inner.geo;
        let o = geo.object_of(g);
        let (locs, _) = img.locs(o, g, g + 1);
        AllocKind::of(locs[0])
    }

    /// The reference: per grain, from the read path's own resolution.
    fn reference(img: &Image, offset: u64, len: u64) -> Vec<AllocExtent> {
        let mut out = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let g = pos / GS;
            let b = ((g + 1) * GS).min(end);
            push(&mut out, pos, b, kind_at(img, g));
            pos = b;
        }
        out
    }

    fn changed_reference(img: &Image, from: &str, offset: u64, len: u64) -> RoaringTreemap {
        let (all, _) = img.changed_grains(Some(from)).unwrap();
        let mut w = RoaringTreemap::new();
        if len > 0 {
            w.insert_range(offset / GS..(offset + len).div_ceil(GS));
        }
        w & all
    }

    async fn random_ops(img: &Image, rng: &mut SmallRng, n: usize) {
        for _ in 0..n {
            let size = img.size();
            let off = rng.gen_range(0..size);
            let len = rng.gen_range(1..=(size - off).min(3 * GS + 100));
            match rng.gen_range(0..10) {
                0..=4 => img
                    .write(
                        off,
                        Bytes::from(vec![rng.gen_range(1..=255u8); len as usize]),
                    )
                    .await
                    .unwrap(),
                5 => img
                    .write(off, Bytes::from(vec![0u8; len as usize]))
                    .await
                    .unwrap(),
                6 | 7 => img.discard(off, len).await.unwrap(),
                _ => img.write_zeroes(off, len).await.unwrap(),
            }
        }
    }

    /// Checks `allocation` (both the cached and the bitmap-walk path) and
    /// `changed_grains_in` against their references on random windows, and
    /// that every byte reported as reading zeros does.
    async fn check(img: &Image, rng: &mut SmallRng, bases: &[String]) {
        let size = img.size();
        for i in 0..40 {
            let off = rng.gen_range(0..=size);
            let len = rng.gen_range(0..=(size - off).min(3 * OS));
            if i % 2 == 0 {
                img.state().cache.clear();
            }
            let walked = img.allocation_with(off, len, false).unwrap();
            let want = reference(img, off, len); // fills the cache
            assert_eq!(walked, want, "walk at {off}+{len}");
            let cached = img.allocation_with(off, len, false).unwrap();
            assert_eq!(cached, want, "cached at {off}+{len}");
            img.state().cache.clear();
            assert_eq!(img.allocation(off, len).unwrap(), want, "at {off}+{len}");
            assert_eq!(img.allocation_with(off, len, true).unwrap(), want);
            let covered: u64 = want.iter().map(|e| e.length).sum();
            assert_eq!(covered, len);
            if len > 0 {
                let bytes = img.read(off, len).await.unwrap();
                for e in &want {
                    if e.kind.reads_as_zeros() {
                        let a = (e.offset - off) as usize;
                        let b = a + e.length as usize;
                        assert!(bytes[a..b].iter().all(|x| *x == 0), "{e:?} not zeros");
                    }
                }
            }
            for base in bases {
                assert_eq!(
                    img.changed_grains_in(base, off, len).unwrap(),
                    changed_reference(img, base, off, len),
                    "changed since {base} at {off}+{len}"
                );
            }
        }
    }

    #[tokio::test]
    async fn allocation_and_changed_grains_match_the_map() {
        let store = Store::new(Arc::new(MemBackend::new()));
        let opts = CreateOptions {
            size: 12 * OS + 5000,
            object_size: OS,
            grain_size: GS,
        };
        store.create("img", opts).await.unwrap();
        let img = store.open("img").await.unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut bases: Vec<String> = Vec::new();
        check(&img, &mut rng, &bases).await;
        for round in 0..6 {
            random_ops(&img, &mut rng, 40).await;
            check(&img, &mut rng, &bases).await;
            let name = format!("s{round}");
            img.snap_create(&name).await.unwrap();
            bases.push(name);
            if round == 2 {
                img.bookmark_create("s1", "b1").await.unwrap();
                img.snap_remove("s1").await.unwrap();
                bases.retain(|b| b != "s1");
                bases.push("b1".into());
            }
            if round == 3 {
                // Shrink cuts grains off (they read as zeros after a grow).
                img.resize(7 * OS + 123).await.unwrap();
                check(&img, &mut rng, &bases).await;
                img.resize(12 * OS + 5000).await.unwrap();
            }
            if round == 4 {
                img.snap_rollback("s2").await.unwrap();
            }
            check(&img, &mut rng, &bases).await;
            // Defragmentation's copies are no change (defrag.rs).
            let opts = crate::DefragOptions {
                min_reads: 2,
                bytes_per_sec: 0,
            };
            img.defragment(&opts).await.unwrap();
            check(&img, &mut rng, &bases).await;
        }
        // A snapshot view and a clone answer through their own chains.
        let snap = store.open_snapshot("img", "s4").await.unwrap();
        check(&snap, &mut rng, &[]).await;
        img.snap_set_protected("s5", true).await.unwrap();
        store.clone_image("img", "s5", "child").await.unwrap();
        let child = store.open("child").await.unwrap();
        check(&child, &mut rng, &[]).await;
        random_ops(&child, &mut rng, 40).await;
        child.snap_create("c0").await.unwrap();
        random_ops(&child, &mut rng, 20).await;
        child.resize(5 * OS + 7).await.unwrap();
        child.resize(9 * OS).await.unwrap();
        check(&child, &mut rng, &["c0".to_string()]).await;
    }

    #[tokio::test]
    async fn bad_ranges_are_errors() {
        let store = Store::new(Arc::new(MemBackend::new()));
        store
            .create("img", CreateOptions::with_size(1 << 20))
            .await
            .unwrap();
        let img = store.open("img").await.unwrap();
        img.snap_create("s").await.unwrap();
        for (off, len) in [
            (1 << 20, 1),
            (0, (1 << 20) + 1),
            (u64::MAX, 2),
            (5, u64::MAX),
        ] {
            let e = img.allocation(off, len).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{off}+{len}");
            let e = img.changed_grains_in("s", off, len).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{off}+{len}");
        }
        assert!(img.allocation(1 << 20, 0).unwrap().is_empty());
        assert!(img.changed_grains_in("s", 1 << 20, 0).unwrap().is_empty());
        let e = img.changed_grains_in("nope", 0, 10).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = img.changed_grains_in("nope", 0, 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    /// On a 1 TiB thin image with grains written far apart (and many written
    /// elsewhere), a window's answer is exactly its extents and costs no
    /// backend op; long windows leave the resolution cache alone: nothing
    /// image-wide is computed or stored.
    #[tokio::test]
    async fn one_tib_thin_image_windows_are_exact_and_local() {
        const TIB: u64 = 1 << 40;
        let fault = Arc::new(FaultBackend::new(Arc::new(MemBackend::new())));
        let store = Store::new(fault.clone() as Arc<dyn Backend>);
        store
            .create("big", CreateOptions::with_size(TIB))
            .await
            .unwrap();
        let img = store.open("big").await.unwrap();
        let far = [0, 300 << 30, 777 << 30, TIB - GS];
        for &at in &far {
            img.write(at, Bytes::from(vec![1u8; GS as usize]))
                .await
                .unwrap();
        }
        img.snap_create("s").await.unwrap();
        // 2000 more grains in 1000 objects spread over the image.
        for i in 0..1000u64 {
            img.write(
                i * (TIB / 1000) / OS * OS + GS,
                Bytes::from(vec![2u8; 8192]),
            )
            .await
            .unwrap();
        }
        img.discard(300 << 30, GS).await.unwrap();
        img.write(TIB - 3 * GS, Bytes::from(vec![3u8; GS as usize]))
            .await
            .unwrap();
        img.state().cache.clear();
        let before = fault.counts();

        let win = TIB - (8 << 20);
        assert_eq!(
            img.allocation(win, 8 << 20).unwrap(),
            vec![
                AllocExtent {
                    offset: win,
                    length: (8 << 20) - 3 * GS,
                    kind: AllocKind::Unallocated
                },
                AllocExtent {
                    offset: TIB - 3 * GS,
                    length: GS,
                    kind: AllocKind::Data
                },
                AllocExtent {
                    offset: TIB - 2 * GS,
                    length: GS,
                    kind: AllocKind::Unallocated
                },
                AllocExtent {
                    offset: TIB - GS,
                    length: GS,
                    kind: AllocKind::Data
                },
            ]
        );
        assert_eq!(
            img.allocation((300 << 30) - 100, 200).unwrap(),
            vec![
                AllocExtent {
                    offset: (300 << 30) - 100,
                    length: 100,
                    kind: AllocKind::Unallocated
                },
                AllocExtent {
                    offset: 300 << 30,
                    length: 100,
                    kind: AllocKind::Zero
                },
            ]
        );
        // The largest NBD request (4 GiB - 1) over written-to space.
        let big = img.allocation(777 << 30, u64::from(u32::MAX)).unwrap();
        assert_eq!(big[0].kind, AllocKind::Data);
        assert_eq!(big[0].length, GS);
        assert_eq!(
            big.iter().map(|e| e.length).sum::<u64>(),
            u64::from(u32::MAX)
        );
        // Windows longer than an object (block-status maps) leave the
        // resolution cache alone; the 200-byte one resolved two objects.
        assert_eq!(img.state().cache.len(), 2, "a map filled the cache");
        let changed: Vec<u64> = img
            .changed_grains_in("s", TIB - (8 << 20), 8 << 20)
            .unwrap()
            .iter()
            .collect();
        assert_eq!(changed, vec![(TIB - 3 * GS) / GS]);
        let changed: Vec<u64> = img
            .changed_grains_in("s", 300 << 30, 1)
            .unwrap()
            .iter()
            .collect();
        assert_eq!(changed, vec![(300 << 30) / GS]);

        // Many small windows, as sparse reads ask.
        let mut rng = SmallRng::seed_from_u64(3);
        let start = std::time::Instant::now();
        for _ in 0..20_000 {
            let off = rng.gen_range(0..TIB / GS) * GS;
            let a = img.allocation(off, GS).unwrap();
            assert_eq!(a.len(), 1);
        }
        eprintln!("20000 4 KiB allocation queries: {:?}", start.elapsed());
        assert_eq!(fault.counts() - before, OpCounts::default());
        // Each small window resolved (and cached) its object, as a read would.
        assert!(img.state().cache.len() <= 20_002);
    }
}

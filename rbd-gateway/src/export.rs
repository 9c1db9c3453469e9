//! [`ImageExport`]: one row-layer [`Image`] (head or snapshot view) served as
//! an NBD export.
//!
//! Block status is answered from the image map only (no data object is
//! read), over the requested window only, so its cost follows the request,
//! not the image, and every answer reflects every acknowledged write:
//!
//! * `base:allocation` — bytes holding data at this view are reported as
//!   data (flags 0), everything else (zeroed, discarded, never written) as
//!   `HOLE|ZERO`, from [`Image::allocation`] (the per-object resolution,
//!   cached or walked over the window). Sparse structured reads ask this
//!   for every read.
//! * `rbd-row:diff:<snap-or-bookmark>` and its alias
//!   `qemu:dirty-bitmap:<snap-or-bookmark>` — bit 0 ([`DIRTY`]) set on grains
//!   changed since that snapshot/bookmark, from
//!   [`Image::changed_grains_in`] over the window. Nothing is cached per
//!   connection: a write, trim or zero through any connection shows in the
//!   next query.

use bytes::Bytes;
use roaring::RoaringTreemap;
use row_layer::allocation::{AllocExtent, AllocKind};
use row_layer::{ErrorKind, Image};
use row_nbd::proto::{BASE_ALLOCATION, STATE_HOLE, STATE_ZERO};
use row_nbd::{
    match_meta_contexts, BoxFuture, ExportBackend, ExportError, ExportResult, Extent, ZeroFlags,
};

/// Namespace of the changed-since-snapshot contexts.
pub const DIFF_CONTEXT_PREFIX: &str = "rbd-row:diff:";
/// qemu-compatible alias namespace of [`DIFF_CONTEXT_PREFIX`].
pub const QEMU_DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";
/// Flag of a diff context: the grain changed since the base.
pub const DIRTY: u32 = 1;

/// Upper bound on descriptors returned by one block-status call (the reply
/// may cover only a prefix of the request; clients ask again).
const MAX_EXTENTS: usize = 1 << 16;

/// Maps a row-layer error to the NBD errno sent to the client.
pub fn export_error(e: row_layer::Error) -> ExportError {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::NotFound => ExportError::invalid(msg),
        ErrorKind::ReadOnly => ExportError::perm(msg),
        ErrorKind::NoSpace => ExportError::no_space(msg),
        _ => ExportError::io(msg),
    }
}

/// The snapshot/bookmark a diff context name refers to.
fn diff_base(context: &str) -> Option<&str> {
    context
        .strip_prefix(DIFF_CONTEXT_PREFIX)
        .or_else(|| context.strip_prefix(QEMU_DIRTY_BITMAP_PREFIX))
        .filter(|b| !b.is_empty())
}

/// An NBD export over one open [`Image`].
///
/// Cheap to create: the registry builds one per connection around a shared
/// image handle (so `CAN_MULTI_CONN` holds: all connections of a head export
/// go through the same engine handle).
pub struct ImageExport {
    image: Image,
    name: String,
    read_only: bool,
}

impl ImageExport {
    /// Wraps `image` under export name `name`. Snapshot views are always
    /// read-only; `read_only` additionally refuses writes to a head.
    pub fn new(image: Image, name: impl Into<String>, read_only: bool) -> Self {
        let read_only = read_only || image.is_read_only();
        ImageExport {
            image,
            name: name.into(),
            read_only,
        }
    }

    /// The underlying image handle.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Names of the snapshots and bookmarks diff contexts may start from.
    fn diff_bases(&self) -> Vec<String> {
        let mut out: Vec<String> = self.image.snap_list().into_iter().map(|s| s.name).collect();
        out.extend(self.image.bookmark_list().into_iter().map(|b| b.0));
        out
    }

    fn offered_contexts(&self) -> Vec<String> {
        let bases = self.diff_bases();
        let mut out = Vec::with_capacity(1 + 2 * bases.len());
        out.push(BASE_ALLOCATION.to_owned());
        for b in &bases {
            out.push(format!("{DIFF_CONTEXT_PREFIX}{b}"));
        }
        for b in &bases {
            out.push(format!("{QEMU_DIRTY_BITMAP_PREFIX}{b}"));
        }
        out
    }

    fn check_writable(&self) -> ExportResult<()> {
        if self.read_only {
            Err(ExportError::perm(format!(
                "export {} is read-only",
                self.name
            )))
        } else {
            Ok(())
        }
    }

    fn status(&self, context: &str, off: u64, len: u32) -> ExportResult<Vec<Extent>> {
        let size = self.image.size();
        let end = off.saturating_add(u64::from(len)).min(size);
        if off >= end {
            return Ok(Vec::new());
        }
        let gs = self.image.geometry().grain_size;
        if context == BASE_ALLOCATION {
            let alloc = self
                .image
                .allocation(off, end - off)
                .map_err(export_error)?;
            extents_from_allocation(&alloc)
        } else if let Some(base) = diff_base(context) {
            let dirty = self
                .image
                .changed_grains_in(base, off, end - off)
                .map_err(export_error)?;
            extents_from_grains(&dirty, gs, off, end, DIRTY, 0)
        } else {
            Err(ExportError::invalid(format!(
                "unknown metadata context {context:?}"
            )))
        }
    }
}

/// `base:allocation` descriptors of an [`Image::allocation`] answer: data
/// is 0, everything that reads as zeros `HOLE|ZERO`; equal neighbours
/// merged; at most [`MAX_EXTENTS`] descriptors (a prefix of the range).
pub(crate) fn extents_from_allocation(alloc: &[AllocExtent]) -> ExportResult<Vec<Extent>> {
    let mut out: Vec<Extent> = Vec::new();
    for e in alloc {
        let flags = match e.kind {
            AllocKind::Data => 0,
            AllocKind::Zero | AllocKind::Unallocated => STATE_HOLE | STATE_ZERO,
        };
        let l = u32::try_from(e.length).map_err(|_| ExportError::overflow("extent too long"))?;
        match out.last_mut() {
            Some(last) if last.flags == flags => {
                last.length = last
                    .length
                    .checked_add(l)
                    .ok_or_else(|| ExportError::overflow("extent too long"))?;
            }
            _ => {
                if out.len() >= MAX_EXTENTS {
                    break;
                }
                out.push(Extent::new(l, flags));
            }
        }
    }
    Ok(out)
}

/// Describes `[off, end)` at grain granularity: bytes in grains of `set`
/// get `in_flags`, the others `out_flags`. Neighbours with equal flags are
/// merged; at most [`MAX_EXTENTS`] descriptors (a prefix of the range).
pub(crate) fn extents_from_grains(
    set: &RoaringTreemap,
    grain_size: u64,
    off: u64,
    end: u64,
    in_flags: u32,
    out_flags: u32,
) -> ExportResult<Vec<Extent>> {
    if grain_size == 0 {
        return Err(ExportError::io("image has a zero grain size"));
    }
    fn push(out: &mut Vec<Extent>, a: u64, b: u64, flags: u32) -> ExportResult<bool> {
        if b <= a {
            return Ok(true);
        }
        let l = u32::try_from(b - a).map_err(|_| ExportError::overflow("extent too long"))?;
        match out.last_mut() {
            Some(last) if last.flags == flags => {
                last.length = last
                    .length
                    .checked_add(l)
                    .ok_or_else(|| ExportError::overflow("extent too long"))?;
            }
            _ => {
                if out.len() >= MAX_EXTENTS {
                    return Ok(false);
                }
                out.push(Extent::new(l, flags));
            }
        }
        Ok(true)
    }
    let mut out: Vec<Extent> = Vec::new();
    let g0 = off / grain_size;
    let g1 = end.div_ceil(grain_size);
    let mut window = RoaringTreemap::new();
    window.insert_range(g0..g1);
    window &= set;
    let mut pos = off;
    let mut run: Option<(u64, u64)> = None; // [first, last] grain of the current run
    let flush_run = |out: &mut Vec<Extent>, pos: &mut u64, first: u64, last: u64| {
        let a = (first * grain_size).max(off);
        let b = ((last + 1) * grain_size).min(end);
        let more = push(out, *pos, a, out_flags)? && push(out, a, b, in_flags)?;
        *pos = b;
        Ok::<bool, ExportError>(more)
    };
    for g in window.iter() {
        match run {
            Some((first, last)) if last + 1 == g => run = Some((first, g)),
            Some((first, last)) => {
                if !flush_run(&mut out, &mut pos, first, last)? {
                    return Ok(out);
                }
                run = Some((g, g));
            }
            None => run = Some((g, g)),
        }
    }
    if let Some((first, last)) = run {
        if !flush_run(&mut out, &mut pos, first, last)? {
            return Ok(out);
        }
    }
    push(&mut out, pos, end, out_flags)?;
    Ok(out)
}

impl ExportBackend for ImageExport {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn preferred_block(&self) -> u32 {
        u32::try_from(self.image.geometry().grain_size).unwrap_or(4096)
    }

    fn description(&self) -> Option<String> {
        Some(match self.image.view() {
            row_layer::View::Head => format!("rbd-row image {}", self.name),
            row_layer::View::HeadReadOnly => format!("rbd-row image {} (read-only)", self.name),
            row_layer::View::Snapshot { .. } => format!("rbd-row snapshot {}", self.name),
        })
    }

    fn read(&self, off: u64, len: u32) -> BoxFuture<'_, ExportResult<Bytes>> {
        Box::pin(async move {
            self.image
                .read(off, u64::from(len))
                .await
                .map_err(export_error)
        })
    }

    fn write(&self, off: u64, data: Bytes, fua: bool) -> BoxFuture<'_, ExportResult<()>> {
        Box::pin(async move {
            self.check_writable()?;
            let r = if fua {
                self.image.write_durable(off, data).await
            } else {
                self.image.write(off, data).await
            };
            r.map_err(export_error)
        })
    }

    fn flush(&self) -> BoxFuture<'_, ExportResult<()>> {
        Box::pin(async move { self.image.flush().await.map_err(export_error) })
    }

    fn trim(&self, off: u64, len: u32, fua: bool) -> BoxFuture<'_, ExportResult<()>> {
        Box::pin(async move {
            self.check_writable()?;
            self.image
                .discard(off, u64::from(len))
                .await
                .map_err(export_error)?;
            if fua {
                self.image.flush().await.map_err(export_error)?;
            }
            Ok(())
        })
    }

    fn write_zeroes(
        &self,
        off: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> BoxFuture<'_, ExportResult<()>> {
        // Zeroing unmaps whole grains (metadata only) and rewrites at most
        // the two partial edge grains: never slower than writing zeroes, so
        // FAST_ZERO is honoured as is, and NO_HOLE needs no special case
        // (the range reads as zeroes either way).
        Box::pin(async move {
            self.check_writable()?;
            self.image
                .write_zeroes(off, u64::from(len))
                .await
                .map_err(export_error)?;
            if flags.fua {
                self.image.flush().await.map_err(export_error)?;
            }
            Ok(())
        })
    }

    fn cache(&self, _off: u64, _len: u32) -> BoxFuture<'_, ExportResult<()>> {
        // The engine has no data cache to warm; a prefetch hint is a no-op.
        Box::pin(async { Ok(()) })
    }

    fn block_status(
        &self,
        context: &str,
        off: u64,
        len: u32,
    ) -> BoxFuture<'_, ExportResult<Vec<Extent>>> {
        let r = self.status(context, off, len);
        Box::pin(async move { r })
    }

    fn meta_contexts(&self, query: &str) -> Vec<String> {
        let offered = self.offered_contexts();
        let refs: Vec<&str> = offered.iter().map(String::as_str).collect();
        match_meta_contexts(&refs, query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use row_layer::backend::mem::MemBackend;
    use row_layer::{CreateOptions, Store};
    use std::sync::Arc;

    fn set(gs: &[u64]) -> RoaringTreemap {
        gs.iter().copied().collect()
    }

    #[test]
    fn grains_to_extents() {
        let s = set(&[1, 2, 5]);
        let e = extents_from_grains(&s, 4096, 0, 8 * 4096, 0, 3).unwrap();
        assert_eq!(
            e,
            vec![
                Extent::new(4096, 3),
                Extent::new(8192, 0),
                Extent::new(8192, 3),
                Extent::new(4096, 0),
                Extent::new(8192, 3),
            ]
        );
        // Unaligned window, clipped at both ends.
        let e = extents_from_grains(&s, 4096, 4000, 4096 + 100, 1, 0).unwrap();
        assert_eq!(e, vec![Extent::new(96, 0), Extent::new(100, 1)]);
        let e = extents_from_grains(&s, 4096, 5000, 6000, 1, 0).unwrap();
        assert_eq!(e, vec![Extent::new(1000, 1)]);
        let e = extents_from_grains(&RoaringTreemap::new(), 4096, 10, 20, 1, 0).unwrap();
        assert_eq!(e, vec![Extent::new(10, 0)]);
    }

    #[test]
    fn context_names() {
        assert_eq!(diff_base("rbd-row:diff:s1"), Some("s1"));
        assert_eq!(diff_base("qemu:dirty-bitmap:s1"), Some("s1"));
        assert_eq!(diff_base("rbd-row:diff:"), None);
        assert_eq!(diff_base("base:allocation"), None);
    }

    #[tokio::test]
    async fn export_over_image() {
        let store = Store::new(Arc::new(MemBackend::new()));
        store
            .create("img", CreateOptions::with_size(1 << 20))
            .await
            .unwrap();
        let img = store.open("img").await.unwrap();
        let ex = ImageExport::new(img.clone(), "img", false);
        assert_eq!(ex.meta_contexts(""), vec![BASE_ALLOCATION.to_owned()]);
        ex.write(8192, Bytes::from(vec![7u8; 4096]), true)
            .await
            .unwrap();
        img.snap_create("s1").await.unwrap();
        ex.write(0, Bytes::from(vec![9u8; 100]), false)
            .await
            .unwrap();
        assert_eq!(
            ex.meta_contexts("rbd-row:"),
            vec!["rbd-row:diff:s1".to_owned()]
        );
        assert_eq!(
            ex.meta_contexts("qemu:dirty-bitmap:s1"),
            vec!["qemu:dirty-bitmap:s1".to_owned()]
        );
        assert!(ex.meta_contexts("rbd-row:diff:nope").is_empty());
        let alloc = ex.block_status(BASE_ALLOCATION, 0, 1 << 20).await.unwrap();
        assert_eq!(
            alloc,
            vec![
                Extent::new(4096, 0),
                Extent::new(4096, 3),
                Extent::new(4096, 0),
                Extent::new((1 << 20) - 3 * 4096, 3),
            ]
        );
        let dirty = ex
            .block_status("rbd-row:diff:s1", 0, 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            dirty,
            vec![Extent::new(4096, 1), Extent::new((1 << 20) - 4096, 0)]
        );
        // Answers follow later writes and zeroing (nothing is cached).
        ex.write(65536, Bytes::from(vec![1u8; 4096]), false)
            .await
            .unwrap();
        ex.trim(8192, 4096, false).await.unwrap();
        let dirty = ex
            .block_status("qemu:dirty-bitmap:s1", 0, 1 << 17)
            .await
            .unwrap();
        assert_eq!(
            dirty,
            vec![
                Extent::new(4096, 1),
                Extent::new(4096, 0),
                Extent::new(4096, 1),
                Extent::new(65536 - 3 * 4096, 0),
                Extent::new(4096, 1),
                Extent::new(65536 - 4096, 0),
            ]
        );
        let alloc = ex
            .block_status(BASE_ALLOCATION, 4096, 1 << 17)
            .await
            .unwrap();
        assert_eq!(
            alloc,
            vec![
                Extent::new(65536 - 4096, 3),
                Extent::new(4096, 0),
                Extent::new(65536, 3),
            ]
        );
        // Past the end: a clear error, not a panic.
        let e = ex.block_status(BASE_ALLOCATION, 1 << 20, 1).await;
        assert_eq!(e.unwrap(), vec![]);
        let e = ex.block_status("nope", 0, 10).await.unwrap_err();
        assert_eq!(e.errno, row_nbd::NbdErrno::Inval);

        let snap = store.open_snapshot("img", "s1").await.unwrap();
        let sx = ImageExport::new(snap, "img@s1", false);
        assert!(sx.read_only());
        let e = sx
            .write(0, Bytes::from_static(b"x"), false)
            .await
            .unwrap_err();
        assert_eq!(e.errno, row_nbd::NbdErrno::Perm);
        assert_eq!(&sx.read(8192, 4).await.unwrap()[..], &[7, 7, 7, 7]);
        assert_eq!(&sx.read(0, 4).await.unwrap()[..], &[0, 0, 0, 0]);
        // The engine's own ReadOnly error maps to EPERM too.
        let e = export_error(row_layer::Error::new(ErrorKind::ReadOnly, "ro"));
        assert_eq!(e.errno, row_nbd::NbdErrno::Perm);
        let e = export_error(row_layer::Error::new(ErrorKind::NotFound, "nf"));
        assert_eq!(e.errno, row_nbd::NbdErrno::Inval);
        let e = export_error(row_layer::Error::new(ErrorKind::Corrupt, "c"));
        assert_eq!(e.errno, row_nbd::NbdErrno::Io);
    }
}

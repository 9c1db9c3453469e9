//! `rbd_diff_iterate2` / `rbd_diff_iterate` on ROW images, from the map
//! deltas (no data object is read).
//!
//! * From a snapshot: the grains changed since it, `exists` 1 where the
//!   view holds data, 0 where it reads as zeros (discarded, zeroed, cut
//!   off); at grain granularity (4 KiB by default).
//! * From the beginning (null `fromsnapname`): the extents holding data,
//!   the parent's included unless `include_parent` is 0 (then a clone's
//!   own writes only, [`Image::diff_own`]). From a snapshot the parent
//!   plays no part, as in librbd.
//! * `whole_object`: every object the extents touch, reported whole
//!   (clipped to the range), `exists` 1 if the object holds any data in
//!   the view, as librbd's object-map diff reports it.
//!
//! The range is clipped to the image end. A callback's negative return
//! stops the walk and is returned.

use crate::handle::{lookup, Handle};
use crate::native::native_call;
use crate::pool::opt_str_arg;
use crate::runtime::wait;
use row_layer::allocation::AllocKind;
use row_layer::Image;
use std::ffi::{c_char, c_int, c_void};

/// The callback of `rbd_diff_iterate*`.
pub type DiffCb = Option<unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int>;

/// One reported extent: offset, length, exists.
type Ext = (u64, u64, bool);

/// The extents of the diff of `view` over `[ofs, ofs+len)`.
fn extents(
    view: &Image,
    from: Option<&str>,
    ofs: u64,
    len: u64,
    how: How,
) -> row_layer::Result<Vec<Ext>> {
    let size = view.size();
    let end = ofs.saturating_add(len).min(size);
    if ofs >= end {
        return Ok(Vec::new());
    }
    let all = match from {
        None if !how.parent => view.diff_own()?,
        _ => view.diff(from)?,
    };
    let mut out: Vec<Ext> = all
        .into_iter()
        .filter_map(|e| {
            let a = e.offset.max(ofs);
            let b = (e.offset + e.length).min(end);
            (a < b).then(|| (a, b - a, e.exists))
        })
        .collect();
    if how.whole {
        out = if how.parent || from.is_some() {
            whole_objects(view, &out, ofs, end)?
        } else {
            own_objects(view, &out, ofs, end)
        };
    }
    Ok(out)
}

/// `include_parent` and `whole_object` of a diff call.
#[derive(Clone, Copy, Debug)]
struct How {
    parent: bool,
    whole: bool,
}

/// The objects `exts` touch.
fn objects_of(exts: &[Ext], os: u64) -> Vec<u64> {
    let mut objs: Vec<u64> = Vec::new();
    for &(a, l, _) in exts {
        for o in a / os..(a + l).div_ceil(os) {
            if objs.last() != Some(&o) {
                objs.push(o);
            }
        }
    }
    objs
}

/// A clone's own objects among `exts` (own data extents), each whole
/// within `[ofs, end)`, `exists` 1: the parent's data does not count.
fn own_objects(view: &Image, exts: &[Ext], ofs: u64, end: u64) -> Vec<Ext> {
    let os = view.info().object_size;
    objects_of(exts, os)
        .into_iter()
        .map(|o| {
            let a = (o * os).max(ofs);
            let b = ((o + 1) * os).min(end);
            (a, b - a, true)
        })
        .collect()
}

/// The objects `exts` touch, each whole within `[ofs, end)`.
fn whole_objects(view: &Image, exts: &[Ext], ofs: u64, end: u64) -> row_layer::Result<Vec<Ext>> {
    let os = view.info().object_size;
    let objs = objects_of(exts, os);
    let mut out = Vec::with_capacity(objs.len());
    for o in objs {
        let a = (o * os).max(ofs);
        let b = ((o + 1) * os).min(end);
        let data = view
            .allocation(a, b - a)?
            .iter()
            .any(|x| x.kind == AllocKind::Data);
        out.push((a, b - a, data));
    }
    Ok(out)
}

/// Shared by both entry points.
///
/// # Safety
/// As librbd.
#[allow(clippy::too_many_arguments)]
unsafe fn diff_iterate(
    image: *mut c_void,
    fromsnapname: *const c_char,
    ofs: u64,
    len: u64,
    include_parent: u8,
    whole_object: u8,
    cb: DiffCb,
    arg: *mut c_void,
) -> c_int {
    let r = match lookup(image) {
        Err(e) => return e,
        Ok(Handle::Native(n)) => {
            return native_call!(rbd_diff_iterate2: fn(*mut c_void, *const c_char, u64, u64, u8, u8, DiffCb, *mut c_void) -> c_int;
                n.raw as *mut c_void, fromsnapname, ofs, len, include_parent, whole_object, cb, arg)
        }
        Ok(Handle::Row(r)) => r,
    };
    let Some(cb) = cb else { return -libc::EINVAL };
    // SAFETY: per the contract.
    let from = match unsafe { opt_str_arg(fromsnapname) } {
        Ok(f) => f,
        Err(e) => return e,
    };
    let view = r.view();
    let how = How {
        parent: include_parent != 0,
        whole: whole_object != 0,
    };
    // CPU work on the in-memory map; run on the runtime like every call.
    let exts = match wait(async move { extents(&view, from.as_deref(), ofs, len, how) }) {
        Err(e) => return e,
        Ok(Err(e)) => return crate::errno::neg(&e),
        Ok(Ok(x)) => x,
    };
    for (o, l, exists) in exts {
        // SAFETY: the caller's callback and argument.
        let r = unsafe { cb(o, l as usize, c_int::from(exists), arg) };
        if r < 0 {
            return r;
        }
    }
    0
}

/// `rbd_diff_iterate2`.
///
/// # Safety
/// As librbd.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rbd_diff_iterate2(
    image: *mut c_void,
    fromsnapname: *const c_char,
    ofs: u64,
    len: u64,
    include_parent: u8,
    whole_object: u8,
    cb: DiffCb,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        diff_iterate(
            image,
            fromsnapname,
            ofs,
            len,
            include_parent,
            whole_object,
            cb,
            arg,
        )
    }
}

/// `rbd_diff_iterate`: `rbd_diff_iterate2` with the parent, fine-grained.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_diff_iterate(
    image: *mut c_void,
    fromsnapname: *const c_char,
    ofs: u64,
    len: u64,
    cb: DiffCb,
    arg: *mut c_void,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_diff_iterate: fn(*mut c_void, *const c_char, u64, u64, DiffCb, *mut c_void) -> c_int;
            n.raw as *mut c_void, fromsnapname, ofs, len, cb, arg)
        }
        // SAFETY: per the contract.
        Ok(Handle::Row(_)) => unsafe { diff_iterate(image, fromsnapname, ofs, len, 1, 0, cb, arg) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use row_layer::backend::mem::MemBackend;
    use row_layer::{CreateOptions, Store};
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;
    const FINE: How = How {
        parent: true,
        whole: false,
    };
    const WHOLE: How = How {
        parent: true,
        whole: true,
    };

    /// A 64 MiB image with data in [0, 4 MiB) and [20 MiB, 21 MiB).
    fn image() -> Image {
        crate::runtime::wait(async {
            let store = Store::new(Arc::new(MemBackend::new()));
            store
                .create("d", CreateOptions::with_size(64 * MIB))
                .await?;
            let img = store.open("d").await?;
            img.write(0, vec![1u8; 4 * MIB as usize].into()).await?;
            img.write(20 * MIB, vec![2u8; MIB as usize].into()).await?;
            Ok::<_, row_layer::Error>(img)
        })
        .expect("runtime")
        .expect("image")
    }

    /// QEMU's block status asks for windows that miss some extents (the
    /// first cut of `extents` computed their length before checking, and
    /// underflowed).
    #[test]
    fn windows_clip_and_skip_extents() {
        let img = image();
        let e = extents(&img, None, 24 * MIB, 40 * MIB, WHOLE).expect("diff");
        assert!(e.is_empty(), "{e:?}");
        let e = extents(&img, None, 4 * MIB, 60 * MIB, FINE).expect("diff");
        assert_eq!(e, vec![(20 * MIB, MIB, true)]);
        let e = extents(&img, None, 2 * MIB, 20 * MIB, WHOLE).expect("diff");
        assert_eq!(e, vec![(2 * MIB, 2 * MIB, true), (20 * MIB, 2 * MIB, true)]);
        let e = extents(&img, None, 0, 128 * MIB, WHOLE).expect("diff");
        assert_eq!(e, vec![(0, 4 * MIB, true), (20 * MIB, 4 * MIB, true)]);
    }

    /// `include_parent` 0 from the beginning of a clone lists only the
    /// clone's own writes (it was `-EOPNOTSUPP`); 1 lists the parent's too.
    #[test]
    fn clone_without_parent_lists_own_writes() {
        let (clone, own) = crate::runtime::wait(async {
            let store = Store::new(Arc::new(MemBackend::new()));
            store
                .create("p", CreateOptions::with_size(64 * MIB))
                .await?;
            let p = store.open("p").await?;
            p.write(0, vec![1u8; 8192].into()).await?;
            p.write(20 * MIB, vec![2u8; 4096].into()).await?;
            p.snap_create("s").await?;
            p.snap_set_protected("s", true).await?;
            p.close().await?;
            store.clone_image("p", "s", "c").await?;
            let c = store.open("c").await?;
            c.write(8 * MIB, vec![3u8; 4096].into()).await?;
            c.write(20 * MIB, vec![4u8; 4096].into()).await?;
            c.discard(0, 4096).await?;
            let own = c.diff_own()?;
            Ok::<_, row_layer::Error>((c, own))
        })
        .expect("runtime")
        .expect("clone");
        let own_only = How {
            parent: false,
            whole: false,
        };
        let e = extents(&clone, None, 0, 64 * MIB, own_only).expect("diff");
        assert_eq!(e, vec![(8 * MIB, 4096, true), (20 * MIB, 4096, true)]);
        assert_eq!(own.len(), 2, "{own:?}");
        let e = extents(&clone, None, 0, 64 * MIB, FINE).expect("diff");
        assert_eq!(
            e,
            vec![
                (4096, 4096, true),
                (8 * MIB, 4096, true),
                (20 * MIB, 4096, true)
            ]
        );
        let whole_own = How {
            parent: false,
            whole: true,
        };
        let e = extents(&clone, None, 0, 64 * MIB, whole_own).expect("diff");
        assert_eq!(e, vec![(8 * MIB, 4 * MIB, true), (20 * MIB, 4 * MIB, true)]);
    }
}

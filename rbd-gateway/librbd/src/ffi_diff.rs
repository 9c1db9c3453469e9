//! `rbd_diff_iterate2` / `rbd_diff_iterate` on ROW images, from the map
//! deltas (no data object is read).
//!
//! * From a snapshot: the grains changed since it, `exists` 1 where the
//!   view holds data, 0 where it reads as zeros (discarded, zeroed, cut
//!   off); at grain granularity (4 KiB by default).
//! * From the beginning (null `fromsnapname`): the extents holding data,
//!   the parent's included (`include_parent` 0 on a clone is refused with
//!   `-EOPNOTSUPP`: the engine's diff has no own-only walk).
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
    whole: bool,
) -> row_layer::Result<Vec<Ext>> {
    let size = view.size();
    let end = ofs.saturating_add(len).min(size);
    if ofs >= end {
        return Ok(Vec::new());
    }
    let mut out: Vec<Ext> = view
        .diff(from)?
        .into_iter()
        .filter_map(|e| {
            let a = e.offset.max(ofs);
            let b = (e.offset + e.length).min(end);
            (a < b).then(|| (a, b - a, e.exists))
        })
        .collect();
    if whole {
        out = whole_objects(view, &out, ofs, end)?;
    }
    Ok(out)
}

/// The objects `exts` touch, each whole within `[ofs, end)`.
fn whole_objects(view: &Image, exts: &[Ext], ofs: u64, end: u64) -> row_layer::Result<Vec<Ext>> {
    let os = view.info().object_size;
    let mut objs: Vec<u64> = Vec::new();
    for &(a, l, _) in exts {
        for o in a / os..(a + l).div_ceil(os) {
            if objs.last() != Some(&o) {
                objs.push(o);
            }
        }
    }
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
    if from.is_none() && include_parent == 0 && view.info().parent.is_some() {
        return -libc::EOPNOTSUPP;
    }
    // CPU work on the in-memory map; run on the runtime like every call.
    let exts =
        match wait(async move { extents(&view, from.as_deref(), ofs, len, whole_object != 0) }) {
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
        let e = extents(&img, None, 24 * MIB, 40 * MIB, true).expect("diff");
        assert!(e.is_empty(), "{e:?}");
        let e = extents(&img, None, 4 * MIB, 60 * MIB, false).expect("diff");
        assert_eq!(e, vec![(20 * MIB, MIB, true)]);
        let e = extents(&img, None, 2 * MIB, 20 * MIB, true).expect("diff");
        assert_eq!(e, vec![(2 * MIB, 2 * MIB, true), (20 * MIB, 2 * MIB, true)]);
        let e = extents(&img, None, 0, 128 * MIB, true).expect("diff");
        assert_eq!(e, vec![(0, 4 * MIB, true), (20 * MIB, 4 * MIB, true)]);
    }
}

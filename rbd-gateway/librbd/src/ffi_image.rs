//! Image properties and control: stat, size, features, flags, parent,
//! resize, cache, notification, encryption.

use crate::handle::{lookup, Handle};
use crate::native::native_call;
use crate::pool::copy_out;
use crate::runtime::run;
use std::ffi::{c_char, c_int, c_void};

/// What ROW images report to `rbd_get_features`: layering (clones),
/// exclusive-lock (one owner), object-map and fast-diff (diffs come from
/// the map, so QEMU's block status asks `rbd_diff_iterate2`), deep-flatten.
pub const ROW_FEATURES: u64 = 1 | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5);

/// librbd's `rbd_encryption_format_t` (a C enum: an unsigned int).
pub type EncryptionFormat = u32;

/// librbd's `rbd_image_info_t`.
#[repr(C)]
pub struct RbdImageInfo {
    /// Size in bytes.
    pub size: u64,
    /// Object size in bytes.
    pub obj_size: u64,
    /// Number of objects.
    pub num_objs: u64,
    /// log2 of the object size.
    pub order: c_int,
    /// Object name prefix (deprecated).
    pub block_name_prefix: [c_char; 24],
    /// Parent pool (deprecated).
    pub parent_pool: i64,
    /// Parent name (deprecated).
    pub parent_name: [c_char; 96],
}

fn raw(n: &crate::handle::NativeImage) -> *mut c_void {
    n.raw as *mut c_void
}

/// `rbd_stat`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_stat(
    image: *mut c_void,
    info: *mut RbdImageInfo,
    infosize: usize,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_stat: fn(*mut c_void, *mut RbdImageInfo, usize) -> c_int;
            raw(&n), info, infosize)
        }
        Ok(Handle::Row(r)) => {
            if info.is_null() || infosize < std::mem::size_of::<RbdImageInfo>() {
                return -libc::ERANGE;
            }
            let i = r.view().info();
            let mut out = RbdImageInfo {
                size: i.size,
                obj_size: i.object_size,
                num_objs: i.size.div_ceil(i.object_size),
                order: i.object_size.trailing_zeros() as c_int,
                block_name_prefix: [0; 24],
                parent_pool: -1,
                parent_name: [0; 96],
            };
            let prefix = format!("rbd_row_data.{}", i.id.0);
            for (d, s) in out
                .block_name_prefix
                .iter_mut()
                .zip(prefix.bytes().take(23))
            {
                *d = s as c_char;
            }
            // SAFETY: valid, large enough out-pointer (checked).
            unsafe { info.write(out) };
            0
        }
    }
}

/// `rbd_get_size`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_get_size(image: *mut c_void, size: *mut u64) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_get_size: fn(*mut c_void, *mut u64) -> c_int; raw(&n), size)
        }
        Ok(Handle::Row(r)) => put(size, r.view().size()),
    }
}

fn put(p: *mut u64, v: u64) -> c_int {
    if p.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: non-null out-pointer from the caller.
    unsafe { *p = v };
    0
}

/// `rbd_get_features`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_get_features(image: *mut c_void, features: *mut u64) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_get_features: fn(*mut c_void, *mut u64) -> c_int; raw(&n), features)
        }
        Ok(Handle::Row(_)) => put(features, ROW_FEATURES),
    }
}

/// `rbd_get_flags`: no flag (the map is never invalid).
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_get_flags(image: *mut c_void, flags: *mut u64) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_get_flags: fn(*mut c_void, *mut u64) -> c_int; raw(&n), flags)
        }
        Ok(Handle::Row(_)) => put(flags, 0),
    }
}

/// `rbd_get_parent_info`: `-ENOENT` without a parent.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_get_parent_info(
    image: *mut c_void,
    parent_poolname: *mut c_char,
    ppoolnamelen: usize,
    parent_name: *mut c_char,
    pnamelen: usize,
    parent_snapname: *mut c_char,
    psnapnamelen: usize,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => native_call!(rbd_get_parent_info:
            fn(*mut c_void, *mut c_char, usize, *mut c_char, usize, *mut c_char, usize) -> c_int;
            raw(&n), parent_poolname, ppoolnamelen, parent_name, pnamelen, parent_snapname, psnapnamelen),
        Ok(Handle::Row(r)) => {
            let Some((pid, psnap, _)) = r.view().info().parent else {
                return -libc::ENOENT;
            };
            let st = r.store.clone();
            let found = run(async move {
                let list = st.list().await?;
                let Some(e) = list.into_iter().find(|e| e.id == pid) else {
                    return Ok(None);
                };
                let v = st.open_head_read_only(&e.name).await?;
                let snap = v.snap_list().into_iter().find(|s| s.id == psnap);
                Ok(snap.map(|s| (e.name, s.name)))
            });
            let pool = r.pool_name();
            match found {
                Err(e) => e,
                Ok(None) => -libc::ENOENT,
                // SAFETY: caller's buffers with their lengths.
                Ok(Some((name, snap))) => unsafe {
                    copy_out(&pool, parent_poolname, ppoolnamelen)
                        .and_then(|()| copy_out(&name, parent_name, pnamelen))
                        .and_then(|()| copy_out(&snap, parent_snapname, psnapnamelen))
                        .map_or_else(|e| e, |()| 0)
                },
            }
        }
    }
}

/// `rbd_resize`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_resize(image: *mut c_void, size: u64) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_resize: fn(*mut c_void, u64) -> c_int; raw(&n), size)
        }
        Ok(Handle::Row(r)) => match r.writable() {
            Err(e) => e,
            Ok(h) => run(async move { h.resize(size).await.map(|()| 0) }).unwrap_or_else(|e| e),
        },
    }
}

/// `rbd_invalidate_cache`: ROW images keep no data cache.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_invalidate_cache(image: *mut c_void) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_invalidate_cache: fn(*mut c_void) -> c_int; raw(&n))
        }
        Ok(Handle::Row(_)) => 0,
    }
}

/// `rbd_set_image_notification` (for native images too: their completions
/// are ours).
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_set_image_notification(
    image: *mut c_void,
    fd: c_int,
    kind: c_int,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => n.events.set(fd, kind),
        Ok(Handle::Row(r)) => r.events.set(fd, kind),
    }
}

/// `rbd_poll_io_events`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_poll_io_events(
    image: *mut c_void,
    comps: *mut *mut c_void,
    numcomp: c_int,
) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        match lookup(image) {
            Err(e) => e,
            Ok(Handle::Native(n)) => n.events.poll(comps, numcomp),
            Ok(Handle::Row(r)) => r.events.poll(comps, numcomp),
        }
    }
}

/// `rbd_encryption_format`: ROW images are not encrypted by librbd
/// (`-EOPNOTSUPP`).
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_encryption_format(
    image: *mut c_void,
    format: EncryptionFormat,
    opts: *mut c_void,
    opts_size: usize,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_encryption_format: fn(*mut c_void, EncryptionFormat, *mut c_void, usize) -> c_int;
            raw(&n), format, opts, opts_size)
        }
        Ok(Handle::Row(_)) => -libc::EOPNOTSUPP,
    }
}

/// `rbd_encryption_load`: `-EOPNOTSUPP` for ROW images.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_encryption_load(
    image: *mut c_void,
    format: EncryptionFormat,
    opts: *mut c_void,
    opts_size: usize,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_encryption_load: fn(*mut c_void, EncryptionFormat, *mut c_void, usize) -> c_int;
            raw(&n), format, opts, opts_size)
        }
        Ok(Handle::Row(_)) => -libc::EOPNOTSUPP,
    }
}

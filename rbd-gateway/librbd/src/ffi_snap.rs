//! Snapshot calls: create, remove, rollback, list, set (read from a
//! snapshot), exists, protect.
//!
//! On a ROW image they run on the owned head (between acknowledged
//! writes, DESIGN.md §5); a read-only or snapshot open gets `-EROFS` for
//! the ones that change the image, as librbd.

use crate::handle::{lookup, Handle};
use crate::native::native_call;
use crate::pool::{opt_str_arg, str_arg, strdup};
use crate::row_image::RowImage;
use crate::runtime::run;
use row_layer::Image;
use std::ffi::{c_char, c_int, c_void};
use std::future::Future;
use std::sync::Arc;

/// librbd's `rbd_snap_info_t`.
#[repr(C)]
pub struct RbdSnapInfo {
    /// Snapshot id.
    pub id: u64,
    /// Image size at the snapshot.
    pub size: u64,
    /// Name (malloc'ed; freed by `rbd_snap_list_end`).
    pub name: *const c_char,
}

/// librbd's `librbd_progress_fn_t`.
pub type ProgressFn = Option<unsafe extern "C" fn(u64, u64, *mut c_void) -> c_int>;

fn raw(n: &crate::handle::NativeImage) -> *mut c_void {
    n.raw as *mut c_void
}

/// Runs `f(head, name)` for a ROW image's snapshot-changing call.
///
/// # Safety
/// `name` NUL-terminated or null.
unsafe fn on_head<F, Fut>(r: &Arc<RowImage>, name: *const c_char, f: F) -> c_int
where
    F: FnOnce(Image, String) -> Fut,
    Fut: Future<Output = row_layer::Result<()>> + Send + 'static,
{
    // SAFETY: per the contract.
    let n = match unsafe { str_arg(name) } {
        Ok(n) => n,
        Err(e) => return e,
    };
    match r.writable() {
        Err(e) => e,
        Ok(h) => run(f(h, n)).map_or_else(|e| e, |()| 0),
    }
}

/// `rbd_snap_create`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_create(image: *mut c_void, snapname: *const c_char) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_create: fn(*mut c_void, *const c_char) -> c_int;
            raw(&n), snapname)
        }
        // SAFETY: per the contract.
        Ok(Handle::Row(r)) => unsafe {
            on_head(&r, snapname, |h, s| async move {
                h.snap_create(&s).await.map(|_| ())
            })
        },
    }
}

/// `rbd_snap_create2` (ROW snapshots need no quiesce; flags and progress
/// are accepted and unused).
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_create2(
    image: *mut c_void,
    snapname: *const c_char,
    flags: u32,
    cb: ProgressFn,
    cbdata: *mut c_void,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_create2: fn(*mut c_void, *const c_char, u32, ProgressFn, *mut c_void) -> c_int;
            raw(&n), snapname, flags, cb, cbdata)
        }
        // SAFETY: per the contract.
        Ok(Handle::Row(r)) => unsafe {
            on_head(&r, snapname, |h, s| async move {
                h.snap_create(&s).await.map(|_| ())
            })
        },
    }
}

/// `rbd_snap_remove`: `-EBUSY` while protected.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_remove(image: *mut c_void, snapname: *const c_char) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_remove: fn(*mut c_void, *const c_char) -> c_int;
            raw(&n), snapname)
        }
        // SAFETY: per the contract.
        Ok(Handle::Row(r)) => unsafe {
            on_head(&r, snapname, |h, s| async move { h.snap_remove(&s).await })
        },
    }
}

/// `rbd_snap_rollback`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_rollback(image: *mut c_void, snapname: *const c_char) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_rollback: fn(*mut c_void, *const c_char) -> c_int;
            raw(&n), snapname)
        }
        // SAFETY: per the contract.
        Ok(Handle::Row(r)) => unsafe {
            on_head(
                &r,
                snapname,
                |h, s| async move { h.snap_rollback(&s).await },
            )
        },
    }
}

/// `rbd_snap_protect`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_protect(image: *mut c_void, snapname: *const c_char) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_protect: fn(*mut c_void, *const c_char) -> c_int;
            raw(&n), snapname)
        }
        // SAFETY: per the contract.
        Ok(Handle::Row(r)) => unsafe {
            on_head(&r, snapname, |h, s| async move {
                h.snap_set_protected(&s, true).await
            })
        },
    }
}

/// `rbd_snap_unprotect`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_unprotect(image: *mut c_void, snapname: *const c_char) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_unprotect: fn(*mut c_void, *const c_char) -> c_int;
            raw(&n), snapname)
        }
        // SAFETY: per the contract.
        Ok(Handle::Row(r)) => unsafe {
            on_head(&r, snapname, |h, s| async move {
                h.snap_set_protected(&s, false).await
            })
        },
    }
}

/// `rbd_snap_list`: the count, with a terminating zero entry; `-ERANGE`
/// and the needed count (+1) in `*max_snaps` when it does not fit.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_list(
    image: *mut c_void,
    snaps: *mut RbdSnapInfo,
    max_snaps: *mut c_int,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_list: fn(*mut c_void, *mut RbdSnapInfo, *mut c_int) -> c_int;
            raw(&n), snaps, max_snaps)
        }
        Ok(Handle::Row(r)) => {
            if max_snaps.is_null() {
                return -libc::EINVAL;
            }
            let list = match &r.head {
                Some(h) => h.snap_list(),
                None => r.view().snap_list(),
            };
            let need = list.len() as c_int + 1;
            // SAFETY: valid pointers per the contract; room for *max_snaps entries.
            unsafe {
                if *max_snaps < need {
                    *max_snaps = need;
                    return -libc::ERANGE;
                }
                for (i, s) in list.iter().enumerate() {
                    *snaps.add(i) = RbdSnapInfo {
                        id: s.id.0,
                        size: s.size,
                        name: strdup(&s.name),
                    };
                }
                *snaps.add(list.len()) = RbdSnapInfo {
                    id: 0,
                    size: 0,
                    name: std::ptr::null(),
                };
            }
            list.len() as c_int
        }
    }
}

/// `rbd_snap_list_end`: frees the names (malloc'ed by us or by librbd).
///
/// # Safety
/// `snaps` from `rbd_snap_list`.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_list_end(snaps: *mut RbdSnapInfo) {
    let mut p = snaps;
    // SAFETY: the list ends with a null name, as rbd_snap_list writes it.
    unsafe {
        while !p.is_null() && !(*p).name.is_null() {
            libc::free((*p).name as *mut c_void);
            (*p).name = std::ptr::null();
            p = p.add(1);
        }
    }
}

/// `rbd_snap_exists`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_exists(
    image: *mut c_void,
    snapname: *const c_char,
    exists: *mut bool,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_exists: fn(*mut c_void, *const c_char, *mut bool) -> c_int;
            raw(&n), snapname, exists)
        }
        // SAFETY: per the contract.
        Ok(Handle::Row(r)) => unsafe {
            let s = match str_arg(snapname) {
                Ok(s) => s,
                Err(e) => return e,
            };
            if exists.is_null() {
                return -libc::EINVAL;
            }
            let list = r
                .head
                .as_ref()
                .map_or_else(|| r.view().snap_list(), |h| h.snap_list());
            *exists = list.iter().any(|x| x.name == s);
            0
        },
    }
}

/// `rbd_snap_set`: reads (and diffs) see snapshot `snapname`, or the head
/// again for null; writes get `-EROFS` meanwhile.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_set(image: *mut c_void, snapname: *const c_char) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_set: fn(*mut c_void, *const c_char) -> c_int;
            raw(&n), snapname)
        }
        Ok(Handle::Row(r)) => {
            // SAFETY: per the contract.
            let snap = match unsafe { opt_str_arg(snapname) } {
                Ok(s) => s,
                Err(e) => return e,
            };
            let (st, name, head, sn) = (
                r.store.clone(),
                r.name.clone(),
                r.head.clone(),
                snap.clone(),
            );
            let view = run(async move {
                match (sn, head) {
                    (Some(s), _) => st.open_snapshot(&name, &s).await,
                    (None, Some(h)) => Ok(h),
                    (None, None) => st.open_head_read_only(&name).await,
                }
            });
            match view {
                Err(e) => e,
                Ok(v) => {
                    r.set_view(v, snap);
                    0
                }
            }
        }
    }
}

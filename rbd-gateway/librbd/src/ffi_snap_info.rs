//! Snapshot lookups by id and name: `rbd_snap_get_id`,
//! `rbd_snap_get_name`, `rbd_snap_get_timestamp`. Backup tools keep a
//! snapshot's id (it is never reused, a name can be) and ask for its name
//! and creation time; ROW snapshot ids are the engine's, which are never
//! reused either. An unknown id or name is `-ENOENT`, as librbd (whose
//! `rbd_snap_get_timestamp` fails an assertion on an unknown id instead).

use crate::handle::{lookup, Handle};
use crate::native::native_call;
use crate::pool::str_arg;
use crate::row_image::RowImage;
use row_layer::SnapInfo;
use std::ffi::{c_char, c_int, c_void};

/// librbd's `CEPH_NOSNAP`.
const CEPH_NOSNAP: u64 = u64::MAX - 1;

/// The image's snapshots (the head's list; a read-only open's view).
fn snaps(r: &RowImage) -> Vec<SnapInfo> {
    r.head
        .as_ref()
        .map_or_else(|| r.view().snap_list(), |h| h.snap_list())
}

/// The snapshot with id `id`, or `-ENOENT`.
fn by_id(r: &RowImage, id: u64) -> Result<SnapInfo, c_int> {
    snaps(r)
        .into_iter()
        .find(|s| s.id.0 == id)
        .ok_or(-libc::ENOENT)
}

/// `rbd_snap_get_id`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_get_id(
    image: *mut c_void,
    snapname: *const c_char,
    snap_id: *mut u64,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_get_id: fn(*mut c_void, *const c_char, *mut u64) -> c_int;
            n.raw as *mut c_void, snapname, snap_id)
        }
        Ok(Handle::Row(r)) => {
            // SAFETY: per the contract.
            let name = match unsafe { str_arg(snapname) } {
                Ok(n) => n,
                Err(e) => return e,
            };
            if snap_id.is_null() {
                return -libc::EINVAL;
            }
            let found = snaps(&r).into_iter().find(|s| s.name == name);
            // SAFETY: valid out-pointer per the contract. librbd stores
            // CEPH_NOSNAP for an unknown name.
            unsafe { *snap_id = found.as_ref().map_or(CEPH_NOSNAP, |s| s.id.0) };
            if found.is_some() {
                0
            } else {
                -libc::ENOENT
            }
        }
    }
}

/// `rbd_snap_get_name`: `-ERANGE` with `*name_len` set to the size needed
/// (NUL included) when the buffer is too small.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_get_name(
    image: *mut c_void,
    snap_id: u64,
    snapname: *mut c_char,
    name_len: *mut usize,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_get_name: fn(*mut c_void, u64, *mut c_char, *mut usize) -> c_int;
            n.raw as *mut c_void, snap_id, snapname, name_len)
        }
        Ok(Handle::Row(r)) => {
            if name_len.is_null() {
                return -libc::EINVAL;
            }
            let s = match by_id(&r, snap_id) {
                Ok(s) => s,
                Err(e) => return e,
            };
            let need = s.name.len() + 1;
            // SAFETY: valid in/out pointer per the contract.
            let have = unsafe { std::mem::replace(&mut *name_len, need) };
            if have < need || snapname.is_null() {
                return -libc::ERANGE;
            }
            // SAFETY: the caller's buffer holds `have >= need` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(s.name.as_ptr(), snapname.cast(), s.name.len());
                *snapname.add(s.name.len()) = 0;
            }
            0
        }
    }
}

/// `rbd_snap_get_timestamp`: the snapshot's creation time.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_snap_get_timestamp(
    image: *mut c_void,
    snap_id: u64,
    timestamp: *mut libc::timespec,
) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_snap_get_timestamp: fn(*mut c_void, u64, *mut libc::timespec) -> c_int;
            n.raw as *mut c_void, snap_id, timestamp)
        }
        Ok(Handle::Row(r)) => {
            if timestamp.is_null() {
                return -libc::EINVAL;
            }
            match by_id(&r, snap_id) {
                Err(e) => e,
                Ok(s) => {
                    // SAFETY: valid out-pointer per the contract.
                    unsafe {
                        (*timestamp).tv_sec = s.created_secs as libc::time_t;
                        (*timestamp).tv_nsec = libc::c_long::from(s.created_nanos);
                    }
                    0
                }
            }
        }
    }
}

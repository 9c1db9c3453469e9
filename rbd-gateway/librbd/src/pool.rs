//! The engine's view of a caller's `rados_ioctx_t`: a [`Store`] on the
//! ioctx's pool and namespace over the caller's own cluster connection.

use row_layer::Store;
use row_rados::RadosBackend;
use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;

/// The store of `io`'s pool and namespace.
///
/// # Safety
/// `io` must be a valid ioctx of a connected cluster handle that stays
/// connected while the store (and images opened from it) live.
pub(crate) unsafe fn store(io: *mut c_void) -> Result<Store, i32> {
    // SAFETY: per the contract.
    unsafe { store_named(io) }.map(|(s, _)| s)
}

/// [`store`] and the pool's name.
///
/// # Safety
/// As [`store`].
pub(crate) unsafe fn store_named(io: *mut c_void) -> Result<(Store, String), i32> {
    // SAFETY: per the contract.
    let b = unsafe { RadosBackend::over_ioctx(io) }.map_err(|e| crate::errno::neg(&e))?;
    let pool = b.pool().to_string();
    Ok((Store::new(Arc::new(b)), pool))
}

/// A caller's C string, or `-EINVAL` if null or not UTF-8.
///
/// # Safety
/// `s` must be null or NUL-terminated.
pub(crate) unsafe fn str_arg(s: *const c_char) -> Result<String, i32> {
    if s.is_null() {
        return Err(-libc::EINVAL);
    }
    // SAFETY: NUL-terminated per the contract.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map(str::to_string)
        .map_err(|_| -libc::EINVAL)
}

/// Like [`str_arg`], but null is `None`.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg(s: *const c_char) -> Result<Option<String>, i32> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: per the contract.
    unsafe { str_arg(s) }.map(Some)
}

/// A `malloc`ed copy of `s` (the caller frees it with `free`, as the
/// `*_cleanup`/`*_end` functions of librbd do).
pub(crate) fn strdup(s: &str) -> *mut c_char {
    let c = std::ffi::CString::new(s.replace('\0', "")).unwrap_or_default();
    // SAFETY: NUL-terminated string.
    unsafe { libc::strdup(c.as_ptr()) }
}

/// Copies `s` with its NUL into `buf` of `len` bytes, or `-ERANGE`.
///
/// # Safety
/// `buf` must have room for `len` bytes (or be null with `len` 0).
pub(crate) unsafe fn copy_out(s: &str, buf: *mut c_char, len: usize) -> Result<(), i32> {
    if s.len() + 1 > len || buf.is_null() {
        return Err(-libc::ERANGE);
    }
    // SAFETY: room for s.len() + 1 bytes, checked above.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}

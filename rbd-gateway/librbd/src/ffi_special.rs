//! The two writes that are more than "these bytes here": write-same
//! (`rbd_writesame`, `rbd_aio_writesame`: a pattern repeated over a range,
//! as SCSI WRITE SAME initiators such as QEMU's and tcmu's issue it) and
//! compare-and-write (`rbd_compare_and_write`, `rbd_aio_compare_and_write`:
//! write only if the range still holds the expected bytes, as SCSI
//! COMPARE AND WRITE and cluster-lock users need).
//!
//! On ROW images, as librbd:
//! * write-same needs a pattern length that divides the length (else
//!   `-EINVAL` from the call itself, before any completion); an all-zero
//!   pattern becomes a zeroing write (librbd's default turns it into a
//!   discard); the synchronous call returns the bytes written;
//! * compare-and-write must stay within one 512-byte sector (else
//!   `-EINVAL`, librbd's limit); on a mismatch nothing is written, the
//!   result is `-EILSEQ` and `*mismatch_off` is what librbd 16.2 stores
//!   there: the image offset of the *object's* start plus the index of the
//!   first differing byte in the compare buffer (not the byte's own image
//!   offset; clients written against 16.2 see the same value). On success
//!   `*mismatch_off` is left alone. The compare and the write hold
//!   the image's write lock exclusively ([`RowImage::cas`]), so no other
//!   write of the handle lands between them; the image has one writer
//!   (DESIGN.md §11, ownership).

use crate::ffi_io::{clip, row_write, submit_native, submit_row, sync, Drive, Op};
use crate::handle::{lookup, Handle};
use crate::native::native_call;
use crate::row_image::RowImage;
use bytes::Bytes;
use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

/// librbd compares and writes at most one sector, never across one.
const SECTOR: u64 = 512;

/// The caller's `len` bytes at `buf`, copied.
///
/// # Safety
/// `buf` valid for reads of `len` bytes (or `len` 0).
unsafe fn copy_in(buf: *const c_char, len: usize) -> Bytes {
    if len == 0 {
        return Bytes::new();
    }
    // SAFETY: per the contract.
    Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) })
}

/// The write a write-same of `pattern` over `len` bytes makes, or
/// `-EINVAL` for a pattern length that does not divide `len`.
fn same_op(pattern: &[u8], len: usize) -> Result<Op, i32> {
    if pattern.is_empty() || !len.is_multiple_of(pattern.len()) {
        return Err(-libc::EINVAL);
    }
    if pattern.iter().all(|&b| b == 0) {
        return Ok(Op::Zero(len as u64));
    }
    Ok(Op::Write(Bytes::from(pattern.repeat(len / pattern.len()))))
}

/// Compare-and-write on a ROW image: `len` (clipped) on success.
async fn row_cmp_write(
    r: Arc<RowImage>,
    off: u64,
    cmp: Bytes,
    data: Bytes,
    mismatch: Option<usize>,
) -> row_layer::Result<isize> {
    let head = match r.writable() {
        Ok(h) => h,
        Err(e) => return Ok(e as isize),
    };
    let len = match clip(head.size(), off, cmp.len() as u64) {
        Ok(l) => l,
        Err(e) => return Ok(e as isize),
    };
    if len == 0 {
        return Ok(0);
    }
    if off % SECTOR + len > SECTOR {
        return Ok(-libc::EINVAL as isize);
    }
    let os = head.info().object_size;
    let _only = r.cas.write().await;
    let now = head.read(off, len).await?;
    if let Some(i) = now.iter().zip(cmp.iter()).position(|(a, b)| a != b) {
        if let Some(m) = mismatch {
            // SAFETY: the caller's out-pointer, valid until the call or
            // its completion returns.
            unsafe { *(m as *mut u64) = off / os * os + i as u64 };
        }
        return Ok(-libc::EILSEQ as isize);
    }
    head.write(off, data.slice(..len as usize)).await?;
    Ok(len as isize)
}

/// `rbd_writesame`: the bytes written.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_writesame(
    image: *mut c_void,
    ofs: u64,
    len: usize,
    buf: *const c_char,
    data_len: usize,
    op_flags: c_int,
) -> isize {
    match lookup(image) {
        Err(e) => e as isize,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_writesame: fn(*mut c_void, u64, usize, *const c_char, usize, c_int) -> isize;
            n.raw as *mut c_void, ofs, len, buf, data_len, op_flags)
        }
        // SAFETY: per the contract.
        Ok(Handle::Row(r)) => match same_op(&unsafe { copy_in(buf, data_len) }, len) {
            Err(e) => e as isize,
            Ok(op) => sync(row_write(r, ofs, op)),
        },
    }
}

/// `rbd_aio_writesame`: the completion's value is 0.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_writesame(
    image: *mut c_void,
    off: u64,
    len: usize,
    buf: *const c_char,
    data_len: usize,
    c: *mut c_void,
    op_flags: c_int,
) -> c_int {
    // SAFETY: per the contract, for all calls below.
    unsafe {
        match lookup(image) {
            Err(e) => e,
            Ok(Handle::Native(n)) => submit_native(n, c, |img, nc| {
                native_call!(rbd_aio_writesame: fn(*mut c_void, u64, usize, *const c_char, usize, *mut c_void, c_int) -> c_int;
                    img, off, len, buf, data_len, nc, op_flags)
            }),
            Ok(Handle::Row(r)) => match same_op(&copy_in(buf, data_len), len) {
                Err(e) => e,
                Ok(op) => submit_row(r.clone(), c, Drive::Runtime, async move {
                    row_write(r, off, op).await.map(|n| n.min(0))
                }),
            },
        }
    }
}

/// `rbd_compare_and_write`: the bytes written, or `-EILSEQ` with
/// `*mismatch_off` set.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_compare_and_write(
    image: *mut c_void,
    ofs: u64,
    len: usize,
    cmp_buf: *const c_char,
    buf: *const c_char,
    mismatch_off: *mut u64,
    op_flags: c_int,
) -> isize {
    match lookup(image) {
        Err(e) => e as isize,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_compare_and_write: fn(*mut c_void, u64, usize, *const c_char, *const c_char, *mut u64, c_int) -> isize;
            n.raw as *mut c_void, ofs, len, cmp_buf, buf, mismatch_off, op_flags)
        }
        Ok(Handle::Row(r)) => {
            // SAFETY: per the contract.
            let (cmp, data) = unsafe { (copy_in(cmp_buf, len), copy_in(buf, len)) };
            let m = (!mismatch_off.is_null()).then_some(mismatch_off as usize);
            sync(row_cmp_write(r, ofs, cmp, data, m))
        }
    }
}

/// `rbd_aio_compare_and_write`: the completion's value is 0, or
/// `-EILSEQ` with `*mismatch_off` set before the completion fires.
///
/// # Safety
/// As librbd; `mismatch_off` valid until the completion fires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rbd_aio_compare_and_write(
    image: *mut c_void,
    off: u64,
    len: usize,
    cmp_buf: *const c_char,
    buf: *const c_char,
    c: *mut c_void,
    mismatch_off: *mut u64,
    op_flags: c_int,
) -> isize {
    // SAFETY: per the contract, for all calls below.
    unsafe {
        match lookup(image) {
            Err(e) => e as isize,
            Ok(Handle::Native(n)) => submit_native(n, c, |img, nc| {
                native_call!(rbd_aio_compare_and_write: fn(*mut c_void, u64, usize, *const c_char, *const c_char, *mut c_void, *mut u64, c_int) -> isize;
                    img, off, len, cmp_buf, buf, nc, mismatch_off, op_flags)
                    as c_int
            }) as isize,
            Ok(Handle::Row(r)) => {
                let (cmp, data) = (copy_in(cmp_buf, len), copy_in(buf, len));
                let m = (!mismatch_off.is_null()).then_some(mismatch_off as usize);
                submit_row(r.clone(), c, Drive::Runtime, async move {
                    row_cmp_write(r, off, cmp, data, m).await.map(|n| n.min(0))
                }) as isize
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_op_checks_the_pattern() {
        assert!(matches!(same_op(b"", 4096), Err(e) if e == -libc::EINVAL));
        assert!(matches!(same_op(b"abc", 4096), Err(e) if e == -libc::EINVAL));
        assert!(matches!(same_op(&[0u8; 512], 4096), Ok(Op::Zero(4096))));
        match same_op(b"ab", 6) {
            Ok(Op::Write(b)) => assert_eq!(&b[..], b"ababab"),
            _ => panic!("a write of the repeated pattern"),
        }
    }
}

//! Data-path calls: synchronous and asynchronous reads, writes, discards,
//! write-zeroes and flushes.
//!
//! As in librbd, a request is clipped to the image end (`-EINVAL` if it
//! starts at or past it, a zero-length one always succeeds); writes need
//! an owned head with no snapshot set (`-EROFS`). An asynchronous call
//! returns 0 once submitted and reports every error, `-EROFS` included,
//! through its completion. Write buffers are copied at submission; read
//! buffers are filled before the completion fires.

use crate::completion::Completion;
use crate::handle::{lookup, Handle, NativeImage};
use crate::inline;
use crate::native::{native_call, native_fn};
use crate::row_image::RowImage;
use crate::runtime::{handle, run};
use bytes::Bytes;
use row_layer::Image;
use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

/// librbd's clip: the length to use, or `-EINVAL` past the end.
pub(crate) fn clip(size: u64, off: u64, len: u64) -> Result<u64, i32> {
    if len == 0 {
        return Ok(0);
    }
    if off >= size {
        return Err(-libc::EINVAL);
    }
    Ok(len.min(size - off))
}

/// A caller's buffer address, carried into a task (the caller keeps the
/// buffer valid until the call or its completion returns).
#[derive(Clone, Copy)]
struct Buf(usize, usize);

impl Buf {
    /// Copies `data` into the buffer list `bufs` in order.
    ///
    /// # Safety
    /// Each buffer valid for writes of its length.
    unsafe fn scatter(bufs: &[Buf], data: &[u8]) {
        let mut pos = 0;
        for b in bufs {
            let n = b.1.min(data.len() - pos);
            // SAFETY: per the contract.
            unsafe { std::ptr::copy_nonoverlapping(data[pos..].as_ptr(), b.0 as *mut u8, n) };
            pos += n;
            if pos == data.len() {
                break;
            }
        }
    }
}

/// Reads `[off, off+len)` of the view into `bufs`; the bytes read.
async fn row_read(img: Image, off: u64, len: u64, bufs: Vec<Buf>) -> row_layer::Result<isize> {
    let len = match clip(img.size(), off, len) {
        Ok(l) => l,
        Err(e) => return Ok(e as isize),
    };
    if len == 0 {
        return Ok(0);
    }
    let data = img.read(off, len).await?;
    // SAFETY: the caller keeps the buffers valid until we return.
    unsafe { Buf::scatter(&bufs, &data) };
    Ok(data.len() as isize)
}

/// What a write-type request does.
pub(crate) enum Op {
    Write(Bytes),
    Discard(u64),
    Zero(u64),
}

/// Applies `op` at `off` to the head; the clipped length.
pub(crate) async fn row_write(r: Arc<RowImage>, off: u64, op: Op) -> row_layer::Result<isize> {
    let head = match r.writable() {
        Ok(h) => h,
        Err(e) => return Ok(e as isize),
    };
    let want = match &op {
        Op::Write(b) => b.len() as u64,
        Op::Discard(l) | Op::Zero(l) => *l,
    };
    let len = match clip(head.size(), off, want) {
        Ok(l) => l,
        Err(e) => return Ok(e as isize),
    };
    if len == 0 {
        return Ok(0);
    }
    let _shared = r.cas.read().await;
    match op {
        Op::Write(b) => head.write(off, b.slice(..len as usize)).await?,
        Op::Discard(_) => head.discard(off, len).await?,
        Op::Zero(_) => head.write_zeroes(off, len).await?,
    }
    Ok(len as isize)
}

/// Flushes the head (a no-op for read-only opens).
async fn row_flush(r: Arc<RowImage>) -> row_layer::Result<isize> {
    if let Some(h) = &r.head {
        h.flush().await?;
    }
    Ok(0)
}

/// Runs a synchronous ROW call to its end.
pub(crate) fn sync(
    fut: impl std::future::Future<Output = row_layer::Result<isize>> + Send + 'static,
) -> isize {
    run(fut).unwrap_or_else(|e| e as isize)
}

/// The caller's buffer `buf` of `len` bytes as one [`Buf`].
fn one(buf: *const c_char, len: usize) -> Vec<Buf> {
    vec![Buf(buf as usize, len)]
}

/// The entries of an iovec array (copied: librbd takes the array only
/// for the call, the buffers until completion).
///
/// # Safety
/// `iov` has `iovcnt` valid entries.
unsafe fn iovecs(iov: *const libc::iovec, iovcnt: c_int) -> Result<Vec<Buf>, i32> {
    if iovcnt < 0 || (iov.is_null() && iovcnt > 0) {
        return Err(-libc::EINVAL);
    }
    // SAFETY: per the contract.
    let v = unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) };
    Ok(v.iter()
        .map(|e| Buf(e.iov_base as usize, e.iov_len))
        .collect())
}

/// Gathers the iovec buffers into one copy.
fn gather(bufs: &[Buf]) -> Bytes {
    let mut out = Vec::with_capacity(bufs.iter().map(|b| b.1).sum());
    for b in bufs {
        // SAFETY: the caller's buffers, valid for the call.
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(b.0 as *const u8, b.1) });
    }
    Bytes::from(out)
}

/// `rbd_read`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_read(
    image: *mut c_void,
    ofs: u64,
    len: usize,
    buf: *mut c_char,
) -> isize {
    match lookup(image) {
        Err(e) => e as isize,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_read: fn(*mut c_void, u64, usize, *mut c_char) -> isize;
            n.raw as *mut c_void, ofs, len, buf)
        }
        Ok(Handle::Row(r)) => sync(row_read(r.view(), ofs, len as u64, one(buf, len))),
    }
}

/// `rbd_read2` (the op flags are hints; ROW images ignore them).
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_read2(
    image: *mut c_void,
    ofs: u64,
    len: usize,
    buf: *mut c_char,
    op_flags: c_int,
) -> isize {
    match lookup(image) {
        Err(e) => e as isize,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_read2: fn(*mut c_void, u64, usize, *mut c_char, c_int) -> isize;
            n.raw as *mut c_void, ofs, len, buf, op_flags)
        }
        Ok(Handle::Row(r)) => sync(row_read(r.view(), ofs, len as u64, one(buf, len))),
    }
}

/// `rbd_write`: the bytes written.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_write(
    image: *mut c_void,
    ofs: u64,
    len: usize,
    buf: *const c_char,
) -> isize {
    match lookup(image) {
        Err(e) => e as isize,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_write: fn(*mut c_void, u64, usize, *const c_char) -> isize;
            n.raw as *mut c_void, ofs, len, buf)
        }
        Ok(Handle::Row(r)) => sync(row_write(r, ofs, Op::Write(gather(&one(buf, len))))),
    }
}

/// `rbd_write2` (op flags ignored for ROW images).
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_write2(
    image: *mut c_void,
    ofs: u64,
    len: usize,
    buf: *const c_char,
    op_flags: c_int,
) -> isize {
    match lookup(image) {
        Err(e) => e as isize,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_write2: fn(*mut c_void, u64, usize, *const c_char, c_int) -> isize;
            n.raw as *mut c_void, ofs, len, buf, op_flags)
        }
        Ok(Handle::Row(r)) => sync(row_write(r, ofs, Op::Write(gather(&one(buf, len))))),
    }
}

/// `rbd_discard`: the bytes discarded.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_discard(image: *mut c_void, ofs: u64, len: u64) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => native_call!(rbd_discard: fn(*mut c_void, u64, u64) -> c_int;
            n.raw as *mut c_void, ofs, len),
        Ok(Handle::Row(r)) => {
            if len > c_int::MAX as u64 {
                return -libc::EINVAL;
            }
            sync(row_write(r, ofs, Op::Discard(len))) as c_int
        }
    }
}

/// `rbd_write_zeroes`: the bytes zeroed.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_write_zeroes(
    image: *mut c_void,
    ofs: u64,
    len: usize,
    zero_flags: c_int,
    op_flags: c_int,
) -> isize {
    match lookup(image) {
        Err(e) => e as isize,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_write_zeroes: fn(*mut c_void, u64, usize, c_int, c_int) -> isize;
            n.raw as *mut c_void, ofs, len, zero_flags, op_flags)
        }
        Ok(Handle::Row(r)) => sync(row_write(r, ofs, Op::Zero(len as u64))),
    }
}

/// `rbd_flush`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_flush(image: *mut c_void) -> c_int {
    match lookup(image) {
        Err(e) => e,
        Ok(Handle::Native(n)) => {
            native_call!(rbd_flush: fn(*mut c_void) -> c_int; n.raw as *mut c_void)
        }
        Ok(Handle::Row(r)) => sync(row_flush(r)) as c_int,
    }
}

/// How a ROW request is driven.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Drive {
    /// Polled first on the calling thread, then by whichever thread wakes
    /// it (`inline`): reads, whose only wait is their RADOS read, so they
    /// cross threads only as native librbd's do.
    Inline,
    /// Spawned on the runtime: writes, which the engine runs in a task of
    /// their own anyway (`Image::write` is detached), so polling them on
    /// the caller's thread only moved the same hand-offs (fio's rbd engine
    /// measured more context switches and CPU per write that way).
    Runtime,
}

/// Submits a ROW request; its result finishes `c` on a library thread
/// (never inside this call).
///
/// # Safety
/// `c` from `rbd_aio_create_completion`, not released.
pub(crate) unsafe fn submit_row<F>(r: Arc<RowImage>, c: *mut c_void, how: Drive, fut: F) -> c_int
where
    F: std::future::Future<Output = row_layer::Result<isize>> + Send + 'static,
{
    // SAFETY: per the contract.
    let Some(comp) = (unsafe { Completion::from_user(c) }) else {
        return -libc::EINVAL;
    };
    let fut = async move { fut.await.unwrap_or_else(|e| crate::errno::neg(&e) as isize) };
    match how {
        Drive::Inline => inline::start(handle(), fut, move |ret| {
            Completion::finish(comp, ret, Some(&r.events));
        }),
        Drive::Runtime => {
            handle().spawn(async move {
                let ret = fut.await;
                Completion::finish(comp, ret, Some(&r.events));
            });
        }
    }
    0
}

/// What a native completion's callback needs to finish ours.
struct Forward {
    comp: Arc<Completion>,
    image: Arc<NativeImage>,
}

/// The callback of a native completion: finishes our completion with
/// librbd's return value, on librbd's thread.
unsafe extern "C" fn forward_done(nc: *mut c_void, arg: *mut c_void) {
    // SAFETY: arg is the Box<Forward> given at submission, used once.
    let fw = unsafe { Box::from_raw(arg as *mut Forward) };
    let ret = native_call!(rbd_aio_get_return_value: fn(*mut c_void) -> isize; nc);
    if let Some(rel) = native_fn!(rbd_aio_release: fn(*mut c_void)) {
        // SAFETY: the native completion, released once, in its callback as QEMU does.
        unsafe { rel(nc) };
    }
    Completion::finish(fw.comp, ret, Some(&fw.image.events));
}

/// Submits a native request with a native completion that finishes `c`.
///
/// # Safety
/// `c` from `rbd_aio_create_completion`; `call` submits to librbd.
pub(crate) unsafe fn submit_native(
    n: Arc<NativeImage>,
    c: *mut c_void,
    call: impl FnOnce(*mut c_void, *mut c_void) -> c_int,
) -> c_int {
    // SAFETY: per the contract.
    let Some(comp) = (unsafe { Completion::from_user(c) }) else {
        return -libc::EINVAL;
    };
    let raw = n.raw as *mut c_void;
    let arg = Box::into_raw(Box::new(Forward { comp, image: n })) as *mut c_void;
    let mut nc: *mut c_void = std::ptr::null_mut();
    type Cb = Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>;
    let r = native_call!(rbd_aio_create_completion: fn(*mut c_void, Cb, *mut *mut c_void) -> c_int;
        arg, Some(forward_done), &mut nc);
    let r = if r < 0 { r } else { call(raw, nc) };
    if r < 0 {
        // Not submitted: nothing will call forward_done.
        // SAFETY: our box, never handed to a running op.
        drop(unsafe { Box::from_raw(arg as *mut Forward) });
        if !nc.is_null() {
            if let Some(rel) = native_fn!(rbd_aio_release: fn(*mut c_void)) {
                // SAFETY: the unused native completion.
                unsafe { rel(nc) };
            }
        }
    }
    r
}

/// `rbd_aio_write`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_write(
    image: *mut c_void,
    off: u64,
    len: usize,
    buf: *const c_char,
    c: *mut c_void,
) -> c_int {
    // SAFETY: per the contract, for all calls below.
    unsafe {
        match lookup(image) {
            Err(e) => e,
            Ok(Handle::Native(n)) => submit_native(n, c, |img, nc| {
                native_call!(rbd_aio_write: fn(*mut c_void, u64, usize, *const c_char, *mut c_void) -> c_int;
                    img, off, len, buf, nc)
            }),
            Ok(Handle::Row(r)) => {
                let data = gather(&one(buf, len));
                submit_row(r.clone(), c, Drive::Runtime, async move {
                    row_write(r, off, Op::Write(data)).await.map(|n| n.min(0))
                })
            }
        }
    }
}

/// `rbd_aio_writev`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_writev(
    image: *mut c_void,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: u64,
    c: *mut c_void,
) -> c_int {
    // SAFETY: per the contract, for all calls below.
    unsafe {
        match lookup(image) {
            Err(e) => e,
            Ok(Handle::Native(n)) => submit_native(n, c, |img, nc| {
                native_call!(rbd_aio_writev: fn(*mut c_void, *const libc::iovec, c_int, u64, *mut c_void) -> c_int;
                    img, iov, iovcnt, off, nc)
            }),
            Ok(Handle::Row(r)) => match iovecs(iov, iovcnt) {
                Err(e) => e,
                Ok(bufs) => {
                    let data = gather(&bufs);
                    submit_row(r.clone(), c, Drive::Runtime, async move {
                        row_write(r, off, Op::Write(data)).await.map(|n| n.min(0))
                    })
                }
            },
        }
    }
}

/// `rbd_aio_read`: the completion's value is the bytes read.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_read(
    image: *mut c_void,
    off: u64,
    len: usize,
    buf: *mut c_char,
    c: *mut c_void,
) -> c_int {
    // SAFETY: per the contract, for all calls below.
    unsafe {
        match lookup(image) {
            Err(e) => e,
            Ok(Handle::Native(n)) => submit_native(n, c, |img, nc| {
                native_call!(rbd_aio_read: fn(*mut c_void, u64, usize, *mut c_char, *mut c_void) -> c_int;
                    img, off, len, buf, nc)
            }),
            Ok(Handle::Row(r)) => {
                let view = r.view();
                submit_row(
                    r,
                    c,
                    Drive::Inline,
                    row_read(view, off, len as u64, one(buf, len)),
                )
            }
        }
    }
}

/// `rbd_aio_readv`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_readv(
    image: *mut c_void,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: u64,
    c: *mut c_void,
) -> c_int {
    // SAFETY: per the contract, for all calls below.
    unsafe {
        match lookup(image) {
            Err(e) => e,
            Ok(Handle::Native(n)) => submit_native(n, c, |img, nc| {
                native_call!(rbd_aio_readv: fn(*mut c_void, *const libc::iovec, c_int, u64, *mut c_void) -> c_int;
                    img, iov, iovcnt, off, nc)
            }),
            Ok(Handle::Row(r)) => match iovecs(iov, iovcnt) {
                Err(e) => e,
                Ok(bufs) => {
                    let len = bufs.iter().map(|b| b.1 as u64).sum();
                    let view = r.view();
                    submit_row(r, c, Drive::Inline, row_read(view, off, len, bufs))
                }
            },
        }
    }
}

/// `rbd_aio_discard`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_discard(
    image: *mut c_void,
    off: u64,
    len: u64,
    c: *mut c_void,
) -> c_int {
    // SAFETY: per the contract, for all calls below.
    unsafe {
        match lookup(image) {
            Err(e) => e,
            Ok(Handle::Native(n)) => submit_native(n, c, |img, nc| {
                native_call!(rbd_aio_discard: fn(*mut c_void, u64, u64, *mut c_void) -> c_int;
                    img, off, len, nc)
            }),
            Ok(Handle::Row(r)) => submit_row(r.clone(), c, Drive::Runtime, async move {
                row_write(r, off, Op::Discard(len)).await.map(|n| n.min(0))
            }),
        }
    }
}

/// `rbd_aio_write_zeroes`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_write_zeroes(
    image: *mut c_void,
    off: u64,
    len: usize,
    c: *mut c_void,
    zero_flags: c_int,
    op_flags: c_int,
) -> c_int {
    // SAFETY: per the contract, for all calls below.
    unsafe {
        match lookup(image) {
            Err(e) => e,
            Ok(Handle::Native(n)) => submit_native(n, c, |img, nc| {
                native_call!(rbd_aio_write_zeroes: fn(*mut c_void, u64, usize, *mut c_void, c_int, c_int) -> c_int;
                    img, off, len, nc, zero_flags, op_flags)
            }),
            Ok(Handle::Row(r)) => submit_row(r.clone(), c, Drive::Runtime, async move {
                row_write(r, off, Op::Zero(len as u64))
                    .await
                    .map(|n| n.min(0))
            }),
        }
    }
}

/// `rbd_aio_flush`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_flush(image: *mut c_void, c: *mut c_void) -> c_int {
    // SAFETY: per the contract, for all calls below.
    unsafe {
        match lookup(image) {
            Err(e) => e,
            Ok(Handle::Native(n)) => submit_native(
                n,
                c,
                |img, nc| native_call!(rbd_aio_flush: fn(*mut c_void, *mut c_void) -> c_int; img, nc),
            ),
            Ok(Handle::Row(r)) => submit_row(r.clone(), c, Drive::Runtime, row_flush(r)),
        }
    }
}

/// `rbd_aio_write2` (op flags are hints; ROW images ignore them).
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_write2(
    image: *mut c_void,
    off: u64,
    len: usize,
    buf: *const c_char,
    c: *mut c_void,
    op_flags: c_int,
) -> c_int {
    // SAFETY: per the contract, for all calls below.
    unsafe {
        match lookup(image) {
            Err(e) => e,
            Ok(Handle::Native(n)) => submit_native(n, c, |img, nc| {
                native_call!(rbd_aio_write2: fn(*mut c_void, u64, usize, *const c_char, *mut c_void, c_int) -> c_int;
                    img, off, len, buf, nc, op_flags)
            }),
            Ok(Handle::Row(_)) => rbd_aio_write(image, off, len, buf, c),
        }
    }
}

/// `rbd_aio_read2` (op flags ignored for ROW images).
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_read2(
    image: *mut c_void,
    off: u64,
    len: usize,
    buf: *mut c_char,
    c: *mut c_void,
    op_flags: c_int,
) -> c_int {
    // SAFETY: per the contract, for all calls below.
    unsafe {
        match lookup(image) {
            Err(e) => e,
            Ok(Handle::Native(n)) => submit_native(n, c, |img, nc| {
                native_call!(rbd_aio_read2: fn(*mut c_void, u64, usize, *mut c_char, *mut c_void, c_int) -> c_int;
                    img, off, len, buf, nc, op_flags)
            }),
            Ok(Handle::Row(_)) => rbd_aio_read(image, off, len, buf, c),
        }
    }
}

//! Asynchronous librados operations as Rust futures.
//!
//! Every operation owns a heap-allocated [`OpState`]: the completion, the
//! write- or read-op handle, the buffers librados writes into and the
//! out-parameters it fills. Before submission the future owns it; at
//! submission it is leaked (`Box::into_raw`) to the completion callback,
//! which takes it back and sends it to the future through a oneshot. If the
//! future was dropped meanwhile, the send fails and the callback frees the
//! state -- on a helper thread, because freeing may drop the last handle
//! on the ioctx or cluster, and shutting librados down from one of its own
//! callback threads would deadlock. Dropping a future early is therefore
//! always safe: librados never writes into freed memory.
//!
//! Depends on `cluster` (the ioctx an operation keeps alive) and `error`,
//! never on `backend`, which builds its operations on this module.

use crate::cluster::IoCtx;
use librados_sys as sys;
use std::ffi::{c_int, c_void, CString};
use std::ptr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// Everything an in-flight operation points into.
pub(crate) struct OpState {
    completion: sys::rados_completion_t,
    /// Write-op handle (released on drop), or null.
    pub(crate) write_op: sys::rados_write_op_t,
    /// Read-op handle (released on drop), or null.
    pub(crate) read_op: sys::rados_read_op_t,
    /// The object name.
    pub(crate) oid: CString,
    /// Strings the operation refers to.
    pub(crate) strings: Vec<CString>,
    /// Buffer librados reads into (capacity = length requested).
    pub(crate) buf: Vec<u8>,
    /// Omap iterator filled by `rados_read_op_omap_get_vals2` (ended on drop).
    pub(crate) omap_iter: sys::rados_omap_iter_t,
    pub(crate) omap_more: u8,
    pub(crate) omap_rval: c_int,
    pub(crate) stat_size: u64,
    pub(crate) stat_mtime: sys::time_t,
    pub(crate) stat_rval: c_int,
    /// Return value of the whole operation.
    pub(crate) ret: c_int,
    /// Object version reported with the completion.
    pub(crate) version: u64,
    tx: Option<oneshot::Sender<Box<OpState>>>,
    /// Keeps the ioctx (and with it the cluster) alive while in flight.
    io: Arc<IoCtx>,
}

// SAFETY: the raw pointers are handles and buffers owned exclusively by this
// state; it is only ever accessed by one thread at a time (the future before
// submission and after completion, the callback in between).
unsafe impl Send for OpState {}

impl OpState {
    pub(crate) fn new(io: Arc<IoCtx>, oid: CString) -> Box<OpState> {
        Box::new(OpState {
            completion: ptr::null_mut(),
            write_op: ptr::null_mut(),
            read_op: ptr::null_mut(),
            oid,
            strings: Vec::new(),
            buf: Vec::new(),
            omap_iter: ptr::null_mut(),
            omap_more: 0,
            omap_rval: 0,
            stat_size: 0,
            stat_mtime: 0,
            stat_rval: 0,
            ret: 0,
            version: 0,
            tx: None,
            io,
        })
    }

    pub(crate) fn io(&self) -> sys::rados_ioctx_t {
        self.io.ptr()
    }
}

impl Drop for OpState {
    fn drop(&mut self) {
        // SAFETY: only reached when no operation is in flight (never
        // submitted, submission failed, or completed); each handle is owned
        // by this state and released once.
        unsafe {
            if !self.omap_iter.is_null() {
                sys::rados_omap_get_end(self.omap_iter);
            }
            if !self.write_op.is_null() {
                sys::rados_release_write_op(self.write_op);
            }
            if !self.read_op.is_null() {
                sys::rados_release_read_op(self.read_op);
            }
            if !self.completion.is_null() {
                sys::rados_aio_release(self.completion);
            }
        }
    }
}

/// Frees a state off the librados callback thread (see module docs).
fn drop_elsewhere(st: Box<OpState>) {
    static REAPER: OnceLock<Mutex<mpsc::Sender<Box<OpState>>>> = OnceLock::new();
    let tx = REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Box<OpState>>();
        let spawned = std::thread::Builder::new()
            .name("rados-reaper".into())
            .spawn(move || {
                for st in rx {
                    drop(st);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the rados reaper thread: {e}");
        }
        Mutex::new(tx)
    });
    let guard = match tx.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Err(mpsc::SendError(st)) = guard.send(st) {
        // No reaper thread: leaking is the only safe choice here.
        std::mem::forget(st);
    }
}

/// The completion callback: hands the state back to its future.
unsafe extern "C" fn on_complete(c: sys::rados_completion_t, arg: *mut c_void) {
    // SAFETY: `arg` is the pointer `submit` leaked to us; librados calls this
    // callback exactly once per completion.
    let mut st = unsafe { Box::from_raw(arg.cast::<OpState>()) };
    // SAFETY: `c` is the live completion this callback belongs to.
    unsafe {
        st.ret = sys::rados_aio_get_return_value(c);
        st.version = sys::rados_aio_get_version(c);
    }
    match st.tx.take() {
        Some(tx) => {
            if let Err(st) = tx.send(st) {
                drop_elsewhere(st);
            }
        }
        None => drop_elsewhere(st),
    }
}

/// Submits an operation and waits for its completion.
///
/// `start` is called once with the state (leaked, at a stable address) and
/// a fresh completion; it must finish setting up the operation (out-pointers
/// into the state are valid until completion) and submit it, returning the
/// submission's return code. It must not touch the state after submitting.
///
/// Returns the completed state (check `ret`), or the negative errno of a
/// failed submission, or `-ETIMEDOUT` if the completion has not fired
/// within `timeout`. A timed-out operation is abandoned, exactly as if its
/// future had been dropped: the callback frees its state whenever librados
/// completes it (a write may still land).
pub(crate) async fn submit<F>(
    st: Box<OpState>,
    timeout: Option<Duration>,
    start: F,
) -> Result<Box<OpState>, c_int>
where
    F: FnOnce(*mut OpState, sys::rados_completion_t) -> c_int,
{
    let rx = start_op(st, start)?;
    // The callback always sends while we wait; a closed channel would mean
    // librados dropped the completion without calling it.
    let closed = |_| -crate::error::errno::EIO;
    // The timer needs a tokio runtime (with its time driver, as every
    // runtime of this repository has); outside one, wait without it.
    let timeout = timeout.filter(|_| tokio::runtime::Handle::try_current().is_ok());
    match timeout {
        None => rx.await.map_err(closed),
        Some(t) => match tokio::time::timeout(t, rx).await {
            Ok(r) => r.map_err(closed),
            Err(_) => Err(-crate::error::errno::ETIMEDOUT),
        },
    }
}

/// The synchronous part of [`submit`]: set up, submit, hand over.
fn start_op<F>(mut st: Box<OpState>, start: F) -> Result<oneshot::Receiver<Box<OpState>>, c_int>
where
    F: FnOnce(*mut OpState, sys::rados_completion_t) -> c_int,
{
    let (tx, rx) = oneshot::channel();
    st.tx = Some(tx);
    let raw = Box::into_raw(st);
    let mut completion: sys::rados_completion_t = ptr::null_mut();
    // SAFETY: valid out-pointer; `raw` stays valid until the callback runs.
    let r = unsafe {
        sys::rados_aio_create_completion2(raw.cast::<c_void>(), Some(on_complete), &mut completion)
    };
    if r < 0 {
        // SAFETY: not submitted; we still own the state.
        drop(unsafe { Box::from_raw(raw) });
        return Err(r);
    }
    // SAFETY: not yet submitted, so we have exclusive access.
    unsafe { (*raw).completion = completion };
    let r = start(raw, completion);
    if r < 0 {
        // SAFETY: a failed submission never calls the callback; we still own
        // the state, and dropping it releases the completion and op handle.
        drop(unsafe { Box::from_raw(raw) });
        return Err(r);
    }
    // From here on `raw` belongs to the callback.
    Ok(rx)
}

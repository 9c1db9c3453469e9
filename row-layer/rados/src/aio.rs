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
//! An operation may be registered in an [`InFlight`] registry, which can
//! cancel it (`rados_aio_cancel`) while it waits: the registry holds the
//! completion pointer, and the state removes itself from the registry
//! before it releases the completion, so a cancel never touches a released
//! completion. The callback never takes the registry's lock (librados may
//! complete a cancelled op on the cancelling thread).
//!
//! Depends on `cluster` (the ioctx an operation keeps alive) and `error`,
//! never on `backend`, which builds its operations on this module.

use crate::cluster::IoCtx;
use futures::future::BoxFuture;
use librados_sys as sys;
use std::collections::HashMap;
use std::ffi::{c_int, c_void, CString};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Called while an operation has waited another stall interval.
pub(crate) trait StallHook: Sync {
    /// May cancel operations (through their [`InFlight`] registry).
    fn stalled(&self) -> BoxFuture<'_, ()>;
}

/// One registered operation.
struct Tracked {
    /// The operation's `rados_completion_t` and `rados_ioctx_t`, as
    /// integers (Send); both live while the op is registered.
    completion: usize,
    io: usize,
    since: Instant,
    cancelled: Arc<AtomicBool>,
}

/// Operations in flight that may be cancelled.
#[derive(Default)]
pub(crate) struct InFlight {
    ops: Mutex<HashMap<u64, Tracked>>,
    next: AtomicU64,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Tracked>> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancels every registered operation that has waited at least `age`;
    /// returns how many librados cancelled (it completes them with
    /// `-ECANCELED`, and [`OpState::cancelled`] is then true).
    pub(crate) fn cancel_older_than(&self, age: Duration) -> usize {
        let ops = self.lock();
        let mut n = 0;
        for t in ops.values() {
            if t.since.elapsed() < age || t.cancelled.load(Ordering::Relaxed) {
                continue;
            }
            // SAFETY: the completion is registered, so its state has not
            // released it (OpState::drop unregisters first, under this
            // lock). Cancelling a completed or unsubmitted op is harmless
            // (-ENOENT).
            let r = unsafe { sys::rados_aio_cancel(t.io as _, t.completion as _) };
            if r == 0 {
                t.cancelled.store(true, Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }

    /// How many operations are registered.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

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
    /// The registry to join at submission (see [`OpState::cancellable`]).
    registry: Option<Arc<InFlight>>,
    /// This op's id in `registry` once registered.
    tracked: Option<u64>,
    /// Set (under the registry's lock) when the registry cancelled it.
    cancelled: Arc<AtomicBool>,
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
            registry: None,
            tracked: None,
            cancelled: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Registers the operation in `registry` when it is submitted, so that
    /// the registry can cancel it while it waits.
    pub(crate) fn cancellable(&mut self, registry: Arc<InFlight>) {
        self.registry = Some(registry);
    }

    /// Whether the registry cancelled this (completed) operation; its
    /// `ret` is then `-ECANCELED`.
    pub(crate) fn cancelled(&self) -> bool {
        // The canceller marks the op under the registry's lock, possibly
        // after librados already completed it: wait for it to finish.
        let _sync = self.registry.as_ref().map(|r| r.lock());
        self.cancelled.load(Ordering::Relaxed)
    }

    fn register(&mut self) {
        let Some(reg) = &self.registry else { return };
        let id = reg.next.fetch_add(1, Ordering::Relaxed);
        reg.lock().insert(
            id,
            Tracked {
                completion: self.completion as usize,
                io: self.io.ptr() as usize,
                since: Instant::now(),
                cancelled: self.cancelled.clone(),
            },
        );
        self.tracked = Some(id);
    }

    pub(crate) fn io(&self) -> sys::rados_ioctx_t {
        self.io.ptr()
    }
}

impl Drop for OpState {
    fn drop(&mut self) {
        // Unregister before the completion is released (see InFlight).
        if let (Some(reg), Some(id)) = (&self.registry, self.tracked) {
            reg.lock().remove(&id);
        }
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
/// While it waits, `stall` (if any) is called every `stall_every`.
///
/// Returns the completed state (check `ret`), or the negative errno of a
/// failed submission, or `-ETIMEDOUT` if the completion has not fired
/// within `timeout`. A timed-out operation is abandoned, exactly as if its
/// future had been dropped: the callback frees its state whenever librados
/// completes it (a write may still land).
pub(crate) async fn submit<F>(
    st: Box<OpState>,
    timeout: Option<Duration>,
    stall: Option<(&dyn StallHook, Duration)>,
    start: F,
) -> Result<Box<OpState>, c_int>
where
    F: FnOnce(*mut OpState, sys::rados_completion_t) -> c_int,
{
    let mut rx = start_op(st, start)?;
    // The callback always sends while we wait; a closed channel would mean
    // librados dropped the completion without calling it.
    let closed = |_| -crate::error::errno::EIO;
    // Timers need a tokio runtime (with its time driver, as every runtime
    // of this repository has); outside one, wait without them.
    if tokio::runtime::Handle::try_current().is_err() {
        return rx.await.map_err(closed);
    }
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let tick = stall.map(|(_, every)| tokio::time::Instant::now() + every);
        let until = match (deadline, tick) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        };
        let Some(until) = until else {
            return rx.await.map_err(closed);
        };
        if let Ok(r) = tokio::time::timeout_at(until, &mut rx).await {
            return r.map_err(closed);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(-crate::error::errno::ETIMEDOUT);
        }
        if let Some((hook, _)) = stall {
            hook.stalled().await;
        }
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
    unsafe {
        (*raw).completion = completion;
        (*raw).register();
    }
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

//! `rbd_completion_t`: the completion of one asynchronous call.
//!
//! The pointer handed to the caller is an `Arc<Completion>` turned into a
//! raw pointer; `rbd_aio_release` drops that reference, and every
//! operation in flight holds its own, so a completion released early (or
//! inside its callback) stays valid until the library is done with it.
//!
//! Finishing: the return value is set, the callback runs (it may read the
//! value and release the completion), the completion counts as complete
//! for `rbd_aio_is_complete`/`rbd_aio_wait_for_complete`, and then it is
//! queued for `rbd_poll_io_events` if the image had a notification fd when
//! it began finishing (so a poller never sees a completion that is not
//! complete yet, and never one the caller released after waiting for it
//! and only then set the fd; librbd queues it just before marking it
//! complete). Callbacks run on a
//! library thread (librados' callback thread for ROW reads, see `inline`;
//! a runtime worker for other ROW calls; the system librbd's thread for
//! native ones), never inside the submitting call; as with librbd they
//! must not block.

use crate::events::Events;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Condvar, Mutex};

/// librbd's `rbd_callback_t`.
pub type RbdCallback = Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>;

#[derive(Default)]
struct State {
    ret: isize,
    complete: bool,
}

/// One completion.
pub struct Completion {
    cb: RbdCallback,
    arg: usize,
    state: Mutex<State>,
    cv: Condvar,
}

impl Completion {
    fn new(arg: *mut c_void, cb: RbdCallback) -> Arc<Completion> {
        Arc::new(Completion {
            cb,
            arg: arg as usize,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The caller's pointer for this completion.
    pub(crate) fn as_user(this: &Arc<Completion>) -> *mut c_void {
        Arc::as_ptr(this) as *mut c_void
    }

    /// A new reference to the completion behind a caller's pointer.
    ///
    /// # Safety
    /// `c` must come from `rbd_aio_create_completion` and not be released.
    pub(crate) unsafe fn from_user(c: *mut c_void) -> Option<Arc<Completion>> {
        if c.is_null() {
            return None;
        }
        let p = c as *const Completion;
        // SAFETY: per the contract, p is a live Arc<Completion> pointer.
        unsafe {
            Arc::increment_strong_count(p);
            Some(Arc::from_raw(p))
        }
    }

    /// Finishes with `ret` (see the module docs for the order).
    pub(crate) fn finish(this: Arc<Completion>, ret: isize, events: Option<&Events>) {
        // Whether to queue it is decided now, while the caller still
        // waits: once it counts as complete the caller may release it and
        // set a notification fd, and a completion queued after that is a
        // freed pointer handed out by rbd_poll_io_events.
        let sink = events.and_then(|ev| Some((ev, ev.sink()?)));
        this.lock().ret = ret;
        if let Some(cb) = this.cb {
            // SAFETY: the caller's callback with the caller's argument, as
            // registered by rbd_aio_create_completion.
            unsafe { cb(Completion::as_user(&this), this.arg as *mut c_void) };
        }
        this.lock().complete = true;
        this.cv.notify_all();
        if let Some((ev, sink)) = sink {
            ev.completed(&this, sink);
        }
    }
}

/// `rbd_aio_create_completion`.
///
/// # Safety
/// `c` must be a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_create_completion(
    cb_arg: *mut c_void,
    complete_cb: RbdCallback,
    c: *mut *mut c_void,
) -> c_int {
    if c.is_null() {
        return -libc::EINVAL;
    }
    let comp = Completion::new(cb_arg, complete_cb);
    // SAFETY: valid out-pointer per the contract.
    unsafe { *c = Arc::into_raw(comp) as *mut c_void };
    0
}

/// Runs `f` on the completion behind `c`.
///
/// # Safety
/// `c` as for [`Completion::from_user`].
unsafe fn with<T>(c: *mut c_void, none: T, f: impl FnOnce(&Completion) -> T) -> T {
    // SAFETY: per the contract.
    match unsafe { Completion::from_user(c) } {
        Some(comp) => f(&comp),
        None => none,
    }
}

/// `rbd_aio_is_complete`: 1 once finished (after its callback), else 0.
///
/// # Safety
/// `c` from `rbd_aio_create_completion`, not released.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_is_complete(c: *mut c_void) -> c_int {
    // SAFETY: per the contract.
    unsafe { with(c, -libc::EINVAL, |comp| c_int::from(comp.lock().complete)) }
}

/// `rbd_aio_wait_for_complete`: blocks until finished; 0.
///
/// # Safety
/// `c` from `rbd_aio_create_completion`, not released.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_wait_for_complete(c: *mut c_void) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        with(c, -libc::EINVAL, |comp| {
            let mut st = comp.lock();
            while !st.complete {
                st = comp.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            0
        })
    }
}

/// `rbd_aio_get_return_value`: bytes for reads, 0 for writes, discards and
/// flushes, a negative errno on failure.
///
/// # Safety
/// `c` from `rbd_aio_create_completion`, not released.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_get_return_value(c: *mut c_void) -> isize {
    // SAFETY: per the contract.
    unsafe { with(c, -libc::EINVAL as isize, |comp| comp.lock().ret) }
}

/// `rbd_aio_get_arg`: the callback argument given at creation.
///
/// # Safety
/// `c` from `rbd_aio_create_completion`, not released.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_get_arg(c: *mut c_void) -> *mut c_void {
    // SAFETY: per the contract.
    unsafe { with(c, std::ptr::null_mut(), |comp| comp.arg as *mut c_void) }
}

/// `rbd_aio_release`: drops the caller's reference (exactly once).
///
/// # Safety
/// `c` from `rbd_aio_create_completion`, not released before.
#[no_mangle]
pub unsafe extern "C" fn rbd_aio_release(c: *mut c_void) {
    if !c.is_null() {
        // SAFETY: the caller's own reference, given up here once.
        drop(unsafe { Arc::from_raw(c as *const Completion) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A caller that waits for a completion, releases it and only then
    /// sets the image's notification fd (abi_check's aio_flush followed by
    /// its polling section) must never be handed that completion by
    /// `rbd_poll_io_events`: the pointer is freed, and the library
    /// thread's late queueing made abi_check read and release it again.
    #[test]
    fn completion_released_before_notification_is_never_polled() {
        let rounds = 2000;
        let mut late = 0;
        for _ in 0..rounds {
            let (rd, wr) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            rd.set_nonblocking(true).expect("nonblocking");
            let events = Arc::new(Events::default());
            let comp = Completion::new(std::ptr::null_mut(), None);
            // SAFETY: the caller's pointer, as rbd_aio_create_completion gives.
            let user = Arc::into_raw(comp) as *mut c_void;
            // SAFETY: live, not released.
            let op = unsafe { Completion::from_user(user) }.expect("completion");
            let ev = events.clone();
            let worker = std::thread::spawn(move || Completion::finish(op, 0, Some(&ev)));
            // SAFETY: the caller's completion, released once after waiting.
            unsafe {
                rbd_aio_wait_for_complete(user);
                rbd_aio_release(user);
            }
            assert_eq!(
                events.set(wr.as_raw_fd(), crate::events::EVENT_TYPE_PIPE),
                0
            );
            worker.join().expect("worker");
            let mut out = [std::ptr::null_mut(); 4];
            // SAFETY: room for 4 pointers.
            late += unsafe { events.poll(out.as_mut_ptr(), 4) };
        }
        assert_eq!(
            late, 0,
            "{late} of {rounds} released completions were polled"
        );
    }
}

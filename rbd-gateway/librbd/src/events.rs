//! Image notification (`rbd_set_image_notification`) and
//! `rbd_poll_io_events`, the polling mode of fio's rbd engine: once a file
//! descriptor is set, every finished completion of the image is queued and
//! the descriptor signalled (an 8-byte count for an eventfd, one byte for
//! a pipe); `rbd_poll_io_events` hands the queued completions out.
//!
//! This serves native images too: their completions are ours (see
//! `native_aio.rs`), so the system librbd's own queue is never used.

use crate::completion::Completion;
use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex};

/// librbd's `EVENT_TYPE_PIPE`.
pub const EVENT_TYPE_PIPE: c_int = 1;
/// librbd's `EVENT_TYPE_EVENTFD`.
pub const EVENT_TYPE_EVENTFD: c_int = 2;

/// A notification descriptor and its type (`EVENT_TYPE_*`).
#[derive(Clone, Copy)]
pub(crate) struct Sink {
    fd: c_int,
    kind: c_int,
}

/// The notification state of one open image.
#[derive(Default)]
pub struct Events {
    sink: Mutex<Option<(c_int, c_int)>>,
    done: Mutex<VecDeque<Arc<Completion>>>,
}

impl Events {
    /// Sets the descriptor and its type (`EVENT_TYPE_*`).
    pub(crate) fn set(&self, fd: c_int, kind: c_int) -> c_int {
        if kind != EVENT_TYPE_PIPE && kind != EVENT_TYPE_EVENTFD {
            return -libc::EINVAL;
        }
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some((fd, kind));
        0
    }

    /// Where the image's completions are signalled now, if anywhere.
    /// [`Completion::finish`] takes this before its completion counts as
    /// complete: a caller that waits for a completion, releases it and
    /// then sets the descriptor must not have it queued afterwards (the
    /// poller would get a freed pointer).
    pub(crate) fn sink(&self) -> Option<Sink> {
        self.sink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(fd, kind)| Sink { fd, kind })
    }

    /// Queues a finished completion and signals `sink` (from [`Self::sink`]).
    pub(crate) fn completed(&self, c: &Arc<Completion>, sink: Sink) {
        // Signal under the queue's lock: a poller sees the completion only
        // after its signal was written, so a caller that closes the fd once
        // it has polled everything never gets a late write into a reused fd.
        let mut q = self.done.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back(c.clone());
        let one = 1u64.to_ne_bytes();
        let len = if sink.kind == EVENT_TYPE_EVENTFD {
            8
        } else {
            1
        };
        // SAFETY: writing len bytes of a local buffer to the caller's fd.
        // A failure (full pipe) loses only a wake-up; the queue keeps it.
        let _ = unsafe { libc::write(sink.fd, one.as_ptr().cast(), len) };
        drop(q);
    }

    /// Moves up to `n` queued completions to `comps`; their count.
    ///
    /// # Safety
    /// `comps` must have room for `n` pointers.
    pub(crate) unsafe fn poll(&self, comps: *mut *mut c_void, n: c_int) -> c_int {
        if comps.is_null() || n < 0 {
            return -libc::EINVAL;
        }
        let mut q = self.done.lock().unwrap_or_else(|p| p.into_inner());
        let mut i = 0;
        while i < n {
            let Some(c) = q.pop_front() else { break };
            // SAFETY: i < n, within the caller's array. The queue's
            // reference is dropped; the caller still holds its own.
            unsafe { *comps.add(i as usize) = Completion::as_user(&c) };
            i += 1;
        }
        i
    }
}

//! The library's own tokio runtime, and how foreign threads wait on it.
//!
//! librbd's callers are C threads that are no runtime's workers. A
//! synchronous call (`rbd_read`, `rbd_snap_create`, ...) spawns its future
//! on this runtime and waits for the result on a std channel: the waiting
//! thread never drives a future itself, so nothing depends on whether the
//! caller is inside some runtime (the `Handle::block_on` from a blocking
//! thread of DESIGN.md §9 is not used anywhere here).
//!
//! The runtime is made on first use and belongs to the process that made
//! it: a child forked afterwards (fio forks its jobs after its parent
//! probed the image) has none of its threads, so it gets a fresh one.

use std::future::Future;
use std::sync::{mpsc, Arc, Mutex};
use tokio::runtime::{Builder, Handle, Runtime};

struct Owned {
    pid: u32,
    rt: Arc<Runtime>,
}

static RUNTIME: Mutex<Option<Owned>> = Mutex::new(None);

/// Worker threads (`RBD_ROW_THREADS`, default 1). One worker is enough
/// for the engine's CPU work and saves the wake-ups of a second worker
/// looking for tasks to steal: fio's rbd engine at iodepth 16 read and
/// wrote 20-30% faster (medians of noisy runs) with one than with two
/// (DESIGN.md §11).
fn worker_threads() -> usize {
    std::env::var("RBD_ROW_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n: &usize| *n > 0)
        .unwrap_or(1)
}

/// This process's runtime.
pub(crate) fn runtime() -> Arc<Runtime> {
    let pid = std::process::id();
    let mut g = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    match &*g {
        Some(o) if o.pid == pid => o.rt.clone(),
        _ => {
            if let Some(old) = g.take() {
                // A forked child: the parent's threads are not here, so the
                // old runtime can neither run nor shut down. Leak it.
                std::mem::forget(old.rt);
            }
            let rt = Arc::new(
                Builder::new_multi_thread()
                    .worker_threads(worker_threads())
                    .thread_name("rbd-row")
                    .enable_all()
                    .build()
                    .expect("rbd-row: cannot start the librbd runtime"),
            );
            *g = Some(Owned {
                pid,
                rt: rt.clone(),
            });
            rt
        }
    }
}

/// Runs `fut` on the runtime and blocks the calling (foreign) thread until
/// it finishes. Must not be called from a runtime worker. A task that
/// panicked gives `-EIO`.
pub(crate) fn wait<T, F>(fut: F) -> Result<T, i32>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| -libc::EIO)
}

/// A handle on this process's runtime.
pub(crate) fn handle() -> Handle {
    runtime().handle().clone()
}

/// [`wait`] for an engine future: its error as librbd's negative errno.
pub(crate) fn run<T, F>(fut: F) -> Result<T, i32>
where
    F: Future<Output = row_layer::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    wait(fut)?.map_err(|e| crate::errno::neg(&e))
}

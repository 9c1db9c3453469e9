//! Asynchronous requests driven by the threads that wake them.
//!
//! A ROW request spawned on the runtime crossed threads three times: the
//! caller's thread woke a runtime worker to start it, librados' callback
//! thread woke the worker again when the object op completed, and the
//! worker woke the caller. fio's rbd engine at iodepth 16 spends more CPU
//! on those wake-ups than on the engine (DESIGN.md §11). Here the request's
//! future is polled first on the submitting thread (which issues the RADOS
//! op itself) and afterwards by whichever thread wakes it -- librados'
//! callback thread for an object op, a runtime worker for an engine task
//! or timer -- so a read crosses threads only where native librbd does.
//!
//! The usual task states make this safe without a scheduler: a wake while
//! the future is being polled only marks it (the poller polls again), so
//! it is never polled on two threads at once nor recursively. Every poll
//! runs inside the library runtime's context, so the engine may spawn
//! tasks and set timers as it does on a worker, and a panic is caught and
//! becomes `-EIO` (it must not unwind into librados' C callback).
//!
//! A future that is ready during its first poll would finish inside the
//! submitting call; librbd never calls back there, so that result is
//! handed to a runtime worker instead.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use tokio::runtime::Handle;

/// Nobody is polling; a wake polls.
const IDLE: u8 = 0;
/// A thread is polling.
const RUNNING: u8 = 1;
/// Woken while being polled: the poller polls again.
const NOTIFIED: u8 = 2;
/// Finished; wakes are ignored.
const DONE: u8 = 3;

type BoxFut = Pin<Box<dyn Future<Output = isize> + Send>>;
type OnDone = Box<dyn FnOnce(isize) + Send>;

/// One request in flight.
struct Task {
    state: AtomicU8,
    /// The future and what to do with its result; taken when it finishes.
    /// Only the thread in `RUNNING` locks it, so the lock never waits.
    work: Mutex<Option<(BoxFut, OnDone)>>,
    rt: Handle,
}

/// Starts `fut` on the calling thread; `done` gets its result (or `-EIO`
/// if it panicked) on the thread that completes it, never on this one.
pub(crate) fn start<F>(rt: Handle, fut: F, done: impl FnOnce(isize) + Send + 'static)
where
    F: Future<Output = isize> + Send + 'static,
{
    let task = Arc::new(Task {
        state: AtomicU8::new(RUNNING),
        work: Mutex::new(Some((Box::pin(fut), Box::new(done)))),
        rt,
    });
    if let Some((ret, done)) = task.clone().run() {
        // Ready at once: answer from a library thread, as librbd does.
        task.rt.spawn(async move { done(ret) });
    }
}

impl Task {
    /// Polls until the future is pending with no wake outstanding, or
    /// finished; the caller holds `RUNNING`. Returns the result and its
    /// continuation when the future finished.
    fn run(self: Arc<Self>) -> Option<(isize, OnDone)> {
        let waker = Waker::from(self.clone());
        let _ctx = self.rt.enter();
        loop {
            let mut slot = self.work.lock().unwrap_or_else(|p| p.into_inner());
            let (fut, _) = slot.as_mut()?;
            let mut cx = Context::from_waker(&waker);
            let polled = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
            let ret = match polled {
                Ok(Poll::Pending) => None,
                Ok(Poll::Ready(v)) => Some(v),
                Err(_) => Some(-libc::EIO as isize),
            };
            if let Some(v) = ret {
                let (fut, done) = slot.take()?;
                drop(slot);
                self.state.store(DONE, Ordering::Release);
                drop(fut);
                return Some((v, done));
            }
            drop(slot);
            match self
                .state
                .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return None,
                // NOTIFIED: woken meanwhile; poll again.
                Err(_) => self.state.store(RUNNING, Ordering::Release),
            }
        }
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let next = match s {
                IDLE => RUNNING,
                RUNNING => NOTIFIED,
                _ => return,
            };
            match self
                .state
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        if s == IDLE {
            if let Some((ret, done)) = self.clone().run() {
                done(ret);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread::ThreadId;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A future woken by a foreign thread (as librados' callback thread
    /// wakes a read) finishes on that thread, not on a runtime worker.
    #[test]
    fn finishes_on_the_waking_thread() {
        let rt = rt();
        let (wake_tx, wake_rx) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = mpsc::channel::<(ThreadId, isize)>();
        start(
            rt.handle().clone(),
            async move {
                let _ = wake_rx.await;
                7
            },
            move |v| tx.send((std::thread::current().id(), v)).expect("send"),
        );
        let waker = std::thread::spawn(move || {
            wake_tx.send(()).expect("wake");
            std::thread::current().id()
        });
        let waker_id = waker.join().expect("waker");
        let (on, v) = rx.recv().expect("done");
        assert_eq!(v, 7);
        assert_eq!(on, waker_id);
    }

    /// A future ready at its first poll is finished by a library thread,
    /// never inside the submitting call.
    #[test]
    fn ready_at_once_is_answered_elsewhere() {
        let rt = rt();
        let (tx, rx) = mpsc::channel::<ThreadId>();
        start(rt.handle().clone(), async { 3 }, move |_| {
            tx.send(std::thread::current().id()).expect("send")
        });
        let on = rx.recv().expect("done");
        assert_ne!(on, std::thread::current().id());
    }

    /// Engine code polled off the runtime may spawn tasks and use timers;
    /// a panic gives -EIO.
    #[test]
    fn runtime_context_and_panics() {
        let rt = rt();
        let (tx, rx) = mpsc::channel::<isize>();
        let t = tx.clone();
        start(
            rt.handle().clone(),
            async {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                tokio::spawn(async { 11 }).await.unwrap_or(-1)
            },
            move |v| t.send(v).expect("send"),
        );
        assert_eq!(rx.recv().expect("done"), 11);
        start(
            rt.handle().clone(),
            async {
                tokio::task::yield_now().await;
                panic!("engine bug")
            },
            move |v| tx.send(v).expect("send"),
        );
        assert_eq!(rx.recv().expect("done"), -libc::EIO as isize);
    }

    /// Many wakes from many threads at once: each future is polled by one
    /// thread at a time and finishes exactly once.
    #[test]
    fn concurrent_wakes_finish_once() {
        let rt = rt();
        let (tx, rx) = mpsc::channel::<isize>();
        let n = 200;
        for i in 0..n {
            let tx = tx.clone();
            let sem = Arc::new(tokio::sync::Semaphore::new(0));
            let s = sem.clone();
            start(
                rt.handle().clone(),
                async move {
                    for _ in 0..8 {
                        s.acquire().await.expect("sem").forget();
                    }
                    i
                },
                move |v| tx.send(v).expect("send"),
            );
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let sem = sem.clone();
                    std::thread::spawn(move || sem.add_permits(1))
                })
                .collect();
            for t in threads {
                t.join().expect("thread");
            }
        }
        drop(tx);
        let mut got: Vec<isize> = rx.iter().collect();
        got.sort_unstable();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
    }
}

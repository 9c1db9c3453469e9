//! The control plane of an owned image: one task per handle.
//!
//! Every change to the image's metadata — snapshot create, remove, rename
//! and protect, rollback, resize, bookmarks, flatten's copies into sealed
//! epochs and its detach, and the reclaimer — runs as a job of this task,
//! one at a time (crucible's upstairs pattern: `select → apply`). Callers
//! submit a job and wait for its reply; a caller that goes away does not
//! cancel the job, so a transition is never abandoned half-way.
//!
//! Invariants the loop keeps (the data path relies on them):
//! - Only control jobs write the header record or change `State::header`,
//!   the sealed deltas and the chain's links. The data path only adds to the
//!   open epoch's delta, and registers touch keys under the shared gate.
//! - A job that changes what the head is (seal, rollback, shrink, detach)
//!   takes the gate exclusively for its commit, so it falls between
//!   acknowledged writes. The reclaimer takes no gate: it only removes
//!   grains no view can resolve to and epochs no view can reach, and
//!   re-checks the committed header before deleting.
//! - The reclaimer runs in the background: a job that may have made garbage
//!   or hidden epochs marks the image, and the loop runs a pass once no job
//!   has arrived for `ImageOptions::reclaim_delay`, its backend ops paced
//!   by `ImageOptions::reclaim_ops_per_sec` ([`Pacer`]). `Image::reclaim`
//!   runs a pass now and waits for it (that pass stands for any background
//!   one pending); `close` does too.
//! - Head checkpoints (checkpoint.rs) are jobs too, asked for by the data
//!   path past `ImageOptions::checkpoint_objects` registrations and by a
//!   ticker every `ImageOptions::checkpoint_interval`.
//! - Defragmentation (defrag.rs) is not a job: it rewrites data through
//!   the data path, object by object, under the shared gate, so a ticker
//!   task runs it every `ImageOptions::defrag_interval` beside client I/O
//!   while this loop goes on taking jobs.

use crate::error::{Error, ErrorKind, Result};
use crate::image::{Image, Inner};
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot};

/// Work for the control task.
pub(crate) enum ControlMsg {
    /// A transition; it sends its own reply.
    Job(Box<dyn FnOnce(Image) -> BoxFuture<'static, ()> + Send>),
    /// Run a reclaim pass now and report how it went.
    Reclaim(oneshot::Sender<Result<()>>),
}

impl Image {
    /// Starts the control task of an owned handle.
    pub(crate) fn start_control(&self) {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.inner.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let weak = Arc::downgrade(&self.inner);
        let delay = self.inner.options.reclaim_delay;
        tokio::spawn(control_loop(weak.clone(), rx, delay));
        let interval = self.inner.options.checkpoint_interval;
        if !interval.is_zero() {
            tokio::spawn(checkpoint_ticker(weak.clone(), interval));
        }
        let interval = self.inner.options.defrag_interval;
        if !interval.is_zero() {
            tokio::spawn(defrag_ticker(weak, interval));
        }
    }

    /// Stops accepting jobs; the task ends after those already queued.
    pub(crate) fn stop_control(&self) {
        self.inner
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Whether the control task still takes jobs (false once `close`
    /// began).
    pub(crate) fn is_controlled(&self) -> bool {
        self.control_sender().is_some()
    }

    fn control_sender(&self) -> Option<mpsc::UnboundedSender<ControlMsg>> {
        self.inner
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `job` on the control task and returns its result. Handles
    /// without a control task (read-only views) run it in place.
    pub(crate) async fn in_control<T, F, Fut>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Image) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let Some(tx) = self.control_sender() else {
            if self.inner.cookie.is_some() {
                return Err(closed());
            }
            return job(self.clone()).await;
        };
        let (reply, answer) = oneshot::channel();
        let msg = ControlMsg::Job(Box::new(move |img| {
            Box::pin(async move {
                let _ = reply.send(job(img).await);
            })
        }));
        tx.send(msg).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Marks the image as having work for the background reclaimer.
    pub(crate) fn want_reclaim(&self) {
        self.inner.reclaim_wanted.store(true, Ordering::SeqCst);
    }

    /// Runs a reclaim pass on the control task and waits for it.
    pub async fn reclaim(&self) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        self.check_writable()?;
        let Some(tx) = self.control_sender() else {
            return Err(closed());
        };
        let (reply, answer) = oneshot::channel();
        tx.send(ControlMsg::Reclaim(reply)).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// The pacer of one reclaim pass (see [`Pacer`]).
    pub(crate) fn reclaim_pacer(&self) -> Pacer {
        Pacer::new(self.inner.options.reclaim_ops_per_sec)
    }
}

/// Spaces the reclaimer's backend ops evenly at
/// `ImageOptions::reclaim_ops_per_sec` (the knob; 0: unlimited). Every op
/// takes its own slot before it is issued, so a pass never sends a burst:
/// at most `rate × op latency` reclaim ops are queued at the OSDs at any
/// time, and client I/O does not wait behind a flood of deletions.
pub(crate) struct Pacer {
    interval: Option<std::time::Duration>,
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    pub(crate) fn new(ops_per_sec: u32) -> Pacer {
        Pacer {
            interval: (ops_per_sec > 0)
                .then(|| std::time::Duration::from_secs_f64(1.0 / f64::from(ops_per_sec))),
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for the next slot of one backend op.
    pub(crate) async fn op(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

fn closed() -> Error {
    Error::new(ErrorKind::Fenced, "the image handle is closed")
}

async fn control_loop(
    weak: Weak<Inner>,
    mut rx: mpsc::UnboundedReceiver<ControlMsg>,
    delay: std::time::Duration,
) {
    // Work left by a crash is found at open: start with a pass.
    let mut pending = weak
        .upgrade()
        .is_some_and(|i| i.reclaim_wanted.load(Ordering::SeqCst));
    loop {
        let msg = if pending {
            tokio::select! {
                biased;
                m = rx.recv() => m,
                _ = tokio::time::sleep(delay) => {
                    pending = false;
                    let Some(inner) = weak.upgrade() else { break };
                    background_pass(Image { inner }).await;
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(msg) = msg else { break };
        let Some(inner) = weak.upgrade() else { break };
        let image = Image { inner };
        match msg {
            ControlMsg::Job(job) => job(image.clone()).await,
            ControlMsg::Reclaim(reply) => {
                image.inner.reclaim_wanted.store(false, Ordering::SeqCst);
                // This pass covers whatever was pending: no second one.
                pending = false;
                let _ = reply.send(image.reclaim_now().await);
            }
        }
        if image.inner.reclaim_wanted.load(Ordering::SeqCst) {
            pending = true;
        }
    }
}

/// Asks for a checkpoint every `interval` while anything was registered
/// in the head since the last one (checkpoint.rs); ends with the handle.
async fn checkpoint_ticker(weak: Weak<Inner>, interval: std::time::Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = weak.upgrade() else { break };
        let image = Image { inner };
        if image.control_sender().is_none() {
            break;
        }
        if image.check_writable().is_ok() && image.state().gens.since > 0 {
            image.want_checkpoint();
        }
    }
}

/// Runs a defragmentation pass (defrag.rs) `interval` after the previous
/// one ended, paced by `ImageOptions::defrag`; ends with the handle. The
/// pass holds the handle only while it rewrites an object, and stops at
/// the next object once `close` begins.
async fn defrag_ticker(weak: Weak<Inner>, interval: std::time::Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let alive = weak.upgrade().map(|inner| Image { inner });
        if !alive.is_some_and(|image| image.is_controlled()) {
            break;
        }
        crate::defrag::background_pass(&weak).await;
    }
}

async fn background_pass(image: Image) {
    image.inner.reclaim_wanted.store(false, Ordering::SeqCst);
    if image.check_writable().is_err() {
        return;
    }
    if let Err(e) = image.reclaim_now().await {
        tracing::warn!(image = %image.inner.id, error = %e, "background reclaim failed");
    }
}

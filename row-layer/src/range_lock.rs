//! Exclusive locks on grain ranges, so that overlapping writes (and their
//! grain read-modify-writes) run one after another while disjoint ones run
//! concurrently.

use std::sync::Mutex;
use tokio::sync::Notify;

/// A set of held, pairwise disjoint `[start, end)` grain ranges.
#[derive(Default)]
pub(crate) struct RangeLock {
    held: Mutex<Vec<(u64, u64, u64)>>,
    next_id: Mutex<u64>,
    released: Notify,
}

/// Releases its range when dropped.
pub(crate) struct RangeGuard<'a> {
    lock: &'a RangeLock,
    id: u64,
}

impl RangeLock {
    /// Waits until `[start, end)` overlaps no held range, then holds it.
    pub(crate) async fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        loop {
            let notified = self.released.notified();
            {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                if !held.iter().any(|&(s, e, _)| s < end && start < e) {
                    let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
                    *next += 1;
                    let id = *next;
                    held.push((start, end, id));
                    return RangeGuard { lock: self, id };
                }
            }
            notified.await;
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.lock.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|&(_, _, id)| id != self.id);
        drop(held);
        self.lock.released.notify_waiters();
    }
}

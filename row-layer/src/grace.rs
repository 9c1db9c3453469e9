//! Waiting for the I/O in flight at one moment without stopping new I/O.
//!
//! Before the reclaimer deletes the objects of an epoch that a merge
//! spliced out, every read that may have resolved a grain to that epoch
//! must be finished. Taking the gate exclusively guarantees it, but a
//! queued exclusive waiter also holds back every new request until the
//! slowest one in flight is done: a stall of about two I/O latencies for
//! all clients. Instead every data-path request holds a token of the
//! current generation ([`Grace::enter`]); [`Grace::wait_for_earlier`]
//! starts a new generation and waits until nobody holds the old one. New
//! requests take the new token and are never held back; they resolve
//! their grains after the splice, so they never name the spliced epoch.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the waiter looks whether the old generation is done.
const POLL: Duration = Duration::from_millis(1);

/// Generations of in-flight requests.
#[derive(Default)]
pub(crate) struct Grace {
    current: Mutex<Arc<()>>,
}

/// Held by one request for its whole duration.
pub(crate) struct GraceToken(#[allow(dead_code)] Arc<()>);

impl Grace {
    /// Joins the current generation.
    pub(crate) fn enter(&self) -> GraceToken {
        GraceToken(
            self.current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// Starts a new generation and waits until every request of the
    /// previous ones has finished.
    pub(crate) async fn wait_for_earlier(&self) {
        let old = std::mem::take(&mut *self.current.lock().unwrap_or_else(|p| p.into_inner()));
        while Arc::strong_count(&old) > 1 {
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_old_requests_only() {
        let g = Arc::new(Grace::default());
        let old = g.enter();
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.wait_for_earlier().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let new = g.enter();
        assert!(!waiter.is_finished(), "returned while an old request ran");
        drop(old);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter waited for a new request")
            .unwrap();
        drop(new);
    }
}

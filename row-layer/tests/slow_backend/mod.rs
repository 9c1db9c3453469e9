//! A test backend wrapper whose header mutations can be made slow or
//! failing (owner_requests.rs, and the RADOS variant in
//! rados/tests/owner_requests_on_rados.rs).
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use row_layer::backend::{Backend, LockOwner, ObjectStat, Watch, WriteOp};
use row_layer::{Error, ErrorKind, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A backend whose header mutations can be made slow or failing, counting
/// those made while armed.
pub struct Slow {
    pub inner: Arc<dyn Backend>,
    pub delay_headers: AtomicBool,
    pub fail_headers: AtomicBool,
    pub header_ops: AtomicU64,
    /// Delay of each header mutation while `delay_headers` is set, in ms.
    pub delay_ms: AtomicU64,
}

pub const HEADER_DELAY: Duration = Duration::from_millis(150);

impl Slow {
    pub fn new(inner: Arc<dyn Backend>) -> Arc<Slow> {
        Arc::new(Slow {
            inner,
            delay_headers: AtomicBool::new(false),
            fail_headers: AtomicBool::new(false),
            header_ops: AtomicU64::new(0),
            delay_ms: AtomicU64::new(HEADER_DELAY.as_millis() as u64),
        })
    }
}

impl Backend for Slow {
    fn kind(&self) -> &'static str {
        "slow-mem"
    }
    fn read(&self, oid: &str, offset: u64, len: u64) -> BoxFuture<'_, Result<Bytes>> {
        self.inner.read(oid, offset, len)
    }
    fn stat(&self, oid: &str) -> BoxFuture<'_, Result<ObjectStat>> {
        self.inner.stat(oid)
    }
    fn omap_get(
        &self,
        oid: &str,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, Bytes)>>> {
        self.inner.omap_get(oid, start_after, prefix, max)
    }
    fn get_xattr(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Option<Bytes>>> {
        self.inner.get_xattr(oid, name)
    }
    fn operate(&self, oid: &str, op: WriteOp) -> BoxFuture<'_, Result<()>> {
        let header = oid.starts_with("rbd_row_header.");
        let oid = oid.to_string();
        async move {
            if header && self.fail_headers.load(Ordering::SeqCst) {
                return Err(Error::new(ErrorKind::Io, "injected header failure"));
            }
            if header && self.delay_headers.load(Ordering::SeqCst) {
                self.header_ops.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)))
                    .await;
            }
            self.inner.operate(&oid, op).await
        }
        .boxed()
    }
    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<String>>> {
        self.inner.list(prefix)
    }
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.flush()
    }
    fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        description: &str,
    ) -> BoxFuture<'_, Result<()>> {
        self.inner.lock_exclusive(oid, name, cookie, description)
    }
    fn unlock(&self, oid: &str, name: &str, cookie: &str) -> BoxFuture<'_, Result<()>> {
        self.inner.unlock(oid, name, cookie)
    }
    fn lock_owners(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Vec<LockOwner>>> {
        self.inner.lock_owners(oid, name)
    }
    fn break_lock(&self, oid: &str, name: &str, owner: &LockOwner) -> BoxFuture<'_, Result<()>> {
        self.inner.break_lock(oid, name, owner)
    }
    fn watch(&self, oid: &str) -> BoxFuture<'_, Result<Watch>> {
        self.inner.watch(oid)
    }
    fn unwatch(&self, watch_id: u64) -> BoxFuture<'_, Result<()>> {
        self.inner.unwatch(watch_id)
    }
    fn fence(&self, owner: &LockOwner) -> BoxFuture<'_, Result<()>> {
        self.inner.fence(owner)
    }
    fn notify(
        &self,
        oid: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        self.inner.notify(oid, payload, timeout)
    }
}

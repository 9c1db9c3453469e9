//! Requests forwarded to the owner run at most once, even when the
//! requester's wait times out and it asks again; a poisoned owner gives its
//! image up (issue 10, defects 6 and 4).

mod common;

use bytes::Bytes;
use common::*;
use futures::future::BoxFuture;
use futures::FutureExt;
use row_layer::backend::{mem::MemBackend, Backend, LockOwner, ObjectStat, Watch, WriteOp};
use row_layer::{Error, ErrorKind, ImageOptions, OwnerRequest, Result, Store};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A backend whose header mutations can be made slow or failing, counting
/// those made while armed.
struct Slow {
    inner: Arc<dyn Backend>,
    delay_headers: AtomicBool,
    fail_headers: AtomicBool,
    header_ops: AtomicU64,
}

const HEADER_DELAY: Duration = Duration::from_millis(150);

impl Slow {
    fn new(inner: Arc<dyn Backend>) -> Arc<Slow> {
        Arc::new(Slow {
            inner,
            delay_headers: AtomicBool::new(false),
            fail_headers: AtomicBool::new(false),
            header_ops: AtomicU64::new(0),
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
                tokio::time::sleep(HEADER_DELAY).await;
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

/// The owner's store (on the slow wrapper) and a requester's store, sharing
/// one in-memory pool. The requester waits `request_timeout` per try.
fn stores(request_timeout: Duration) -> (Arc<Slow>, Store, Store) {
    let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let slow = Slow::new(mem.clone());
    let opts = ImageOptions {
        owner_timeout: Duration::from_millis(300),
        request_timeout,
        // Count the request's own header ops, not the background reclaimer's.
        reclaim_delay: Duration::from_secs(3600),
        ..ImageOptions::default()
    };
    let owner = Store::new(slow.clone() as Arc<dyn Backend>).with_image_options(opts.clone());
    let requester = Store::new(mem).with_image_options(opts);
    (slow, owner, requester)
}

/// Header mutations (made while armed) of one forwarded request that is
/// answered in time.
async fn header_ops_of(req: OwnerRequest) -> u64 {
    let (slow, a, b) = stores(Duration::from_secs(30));
    a.create("img", small_opts(2 * OBJ)).await.expect("create");
    let owner = a.open("img").await.expect("open");
    owner.write(0, pattern(1, 8192)).await.expect("write");
    owner.snap_create("base").await.expect("base snapshot");
    slow.delay_headers.store(true, Ordering::SeqCst);
    b.execute("img", req).await.expect("request in time");
    slow.delay_headers.store(false, Ordering::SeqCst);
    owner.close().await.expect("close");
    slow.header_ops.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_request_runs_once_and_reports_its_own_result() {
    let once = header_ops_of(OwnerRequest::SnapCreate("s".into())).await;
    assert!(once > 0, "snap create commits the header");
    // Now the requester gives up waiting long before the owner is done.
    let (slow, a, b) = stores(Duration::from_millis(100));
    a.create("img", small_opts(2 * OBJ)).await.expect("create");
    let owner = a.open("img").await.expect("open");
    owner.write(0, pattern(1, 8192)).await.expect("write");
    owner.snap_create("base").await.expect("base snapshot");
    slow.delay_headers.store(true, Ordering::SeqCst);
    let r = b.execute("img", OwnerRequest::SnapCreate("s".into())).await;
    // Let anything a re-sent copy started finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    slow.delay_headers.store(false, Ordering::SeqCst);
    let ran = slow.header_ops.load(Ordering::SeqCst);
    assert_eq!(
        ran, once,
        "the snapshot request must run exactly once on the owner ({ran} header ops, one run makes {once})"
    );
    r.expect("the request's own result (it succeeded), not a false 'exists'");
    let names: Vec<String> = owner.snap_list().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["base", "s"]);
    owner.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_forced_rollback_runs_once() {
    let req = || OwnerRequest::SnapRollback {
        name: "base".into(),
        force: true,
    };
    let once = header_ops_of(req()).await;
    let (slow, a, b) = stores(Duration::from_millis(100));
    a.create("img", small_opts(2 * OBJ)).await.expect("create");
    let owner = a.open("img").await.expect("open");
    owner.write(0, pattern(1, 8192)).await.expect("write");
    owner.snap_create("base").await.expect("base snapshot");
    owner.write(0, pattern(2, 8192)).await.expect("write");
    slow.delay_headers.store(true, Ordering::SeqCst);
    let r = b.execute("img", req()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    slow.delay_headers.store(false, Ordering::SeqCst);
    let ran = slow.header_ops.load(Ordering::SeqCst);
    assert_eq!(ran, once, "rollback ran more than once ({ran} vs {once})");
    r.expect("forced rollback");
    assert_eq!(owner.read(0, 8192).await.expect("read"), pattern(1, 8192));
    owner.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_owner_stops_answering_and_its_image_can_be_taken_over() {
    let (slow, a, b) = stores(Duration::from_secs(5));
    a.create("img", small_opts(2 * OBJ)).await.expect("create");
    let owner = a.open("img").await.expect("open");
    owner.write(0, pattern(1, 8192)).await.expect("write");
    // The live owner keeps its image.
    let err = b.open("img").await.err().expect("refused while usable");
    assert_eq!(err.kind(), ErrorKind::Busy);
    // A header commit with an unknown outcome poisons the handle.
    slow.fail_headers.store(true, Ordering::SeqCst);
    owner.snap_create("x").await.expect_err("injected failure");
    slow.fail_headers.store(false, Ordering::SeqCst);
    assert_eq!(
        owner
            .write(0, pattern(2, 4096))
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::Fenced),
        "the handle is poisoned"
    );
    // Someone else can take the image over now.
    let img = tokio::time::timeout(Duration::from_secs(10), b.open("img"))
        .await
        .expect("open does not hang")
        .expect("a poisoned owner must give up its image");
    assert_eq!(img.read(0, 8192).await.expect("read"), pattern(1, 8192));
    img.write(0, pattern(3, 4096))
        .await
        .expect("new owner writes");
    img.close().await.expect("close");
    drop(owner);
}

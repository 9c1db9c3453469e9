//! Requests forwarded to the owner run at most once, even when the
//! requester's wait times out and it asks again; a poisoned owner gives its
//! image up (issue 10, defects 6 and 4).

mod common;
#[path = "slow_backend/mod.rs"]
mod slow_backend;

use common::*;
use row_layer::backend::{mem::MemBackend, Backend};
use row_layer::{ErrorKind, ImageOptions, OwnerRequest, Store};
use slow_backend::Slow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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

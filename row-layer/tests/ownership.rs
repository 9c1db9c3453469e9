//! Image ownership: one writer, liveness by notification, takeover of dead
//! owners, and requests forwarded to the owner.

mod common;

use bytes::Bytes;
use common::*;
use row_layer::backend::{mem::MemBackend, Backend};
use row_layer::{ErrorKind, ImageOptions, OwnerRequest, Store};
use std::sync::Arc;
use std::time::Duration;

fn stores() -> (Store, Store) {
    let be: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let opts = ImageOptions {
        owner_timeout: Duration::from_millis(300),
        ..ImageOptions::default()
    };
    (
        Store::new(be.clone()).with_image_options(opts.clone()),
        Store::new(be).with_image_options(opts),
    )
}

#[tokio::test]
async fn second_writer_is_refused_with_the_owner_named() {
    let (a, b) = stores();
    a.create("img", small_opts(OBJ)).await.expect("create");
    let owner = a.open("img").await.expect("open");
    let err = b.open("img").await.err().expect("second open refused");
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert!(err.message().contains("is owned by"), "{err}");
    owner.close().await.expect("close");
    let again = b.open("img").await.expect("open after close");
    again.close().await.expect("close");
}

#[tokio::test]
async fn dead_owner_is_taken_over_and_its_metadata_commits_fail() {
    let (a, b) = stores();
    a.create("img", small_opts(OBJ)).await.expect("create");
    let first = a.open("img").await.expect("open");
    first.write(0, pattern(1, 4096)).await.expect("write");
    first.flush().await.expect("flush");
    let stale = first.clone();
    drop(first);
    // `stale` still exists: simulate the process dying by dropping every
    // handle that answers notifications.
    drop(stale);
    let second = b.open("img").await.expect("takeover of a dead owner");
    assert_eq!(second.read(0, 4096).await.expect("read"), pattern(1, 4096));
    second.snap_create("s").await.expect("new owner works");
}

#[tokio::test]
async fn stale_handle_commits_are_refused_after_takeover() {
    let (a, b) = stores();
    a.create("img", small_opts(OBJ)).await.expect("create");
    let first = a.open("img").await.expect("open");
    // Keep the handle but stop it answering (a stalled process).
    let header = first.header();
    let _ = header;
    let second = {
        // The live owner answers: refused.
        let err = b.open("img").await.err().expect("refused while alive");
        assert_eq!(err.kind(), ErrorKind::Busy);
        first.clone().close().await.expect("close releases");
        b.open("img").await.expect("open")
    };
    second.write(0, pattern(2, 4096)).await.expect("write");
    // The old handle's metadata commits are refused now.
    let err = first
        .snap_create("late")
        .await
        .expect_err("stale commit refused");
    assert!(
        matches!(err.kind(), ErrorKind::Fenced | ErrorKind::Busy),
        "{err:?}"
    );
    assert!(second.snap_list().is_empty());
}

#[tokio::test]
async fn requests_are_forwarded_to_the_owner_and_ordered_between_writes() {
    let (a, b) = stores();
    a.create("img", small_opts(2 * OBJ)).await.expect("create");
    let owner = a.open("img").await.expect("open");
    owner.write(0, pattern(1, 8192)).await.expect("write");
    b.execute("img", OwnerRequest::SnapCreate("remote".into()))
        .await
        .expect("forwarded snapshot");
    owner.write(0, pattern(2, 8192)).await.expect("write");
    assert_eq!(owner.snap_list().len(), 1);
    let snap = b.open_snapshot("img", "remote").await.expect("open snap");
    assert_eq!(snap.read(0, 8192).await.expect("read"), pattern(1, 8192));
    // Errors come back with their kind.
    let err = b
        .execute("img", OwnerRequest::SnapCreate("remote".into()))
        .await
        .expect_err("duplicate");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    // Rolling back an image in use needs --force.
    let err = b
        .execute(
            "img",
            OwnerRequest::SnapRollback {
                name: "remote".into(),
                force: false,
            },
        )
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Busy);
    b.execute(
        "img",
        OwnerRequest::SnapRollback {
            name: "remote".into(),
            force: true,
        },
    )
    .await
    .expect("forced rollback");
    assert_eq!(owner.read(0, 8192).await.expect("read"), pattern(1, 8192));
    b.execute("img", OwnerRequest::Resize(3 * OBJ))
        .await
        .expect("resize");
    assert_eq!(owner.size(), 3 * OBJ);
    // Without an owner the request runs locally.
    owner.close().await.expect("close");
    b.execute("img", OwnerRequest::SnapRemove("remote".into()))
        .await
        .expect("local");
    let img = a.open("img").await.expect("open");
    assert!(img.snap_list().is_empty());
    img.write(0, Bytes::from(vec![3u8; 4096]))
        .await
        .expect("write");
}

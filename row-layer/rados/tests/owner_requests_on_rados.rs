//! A request forwarded to the owner runs once even when the requester's
//! notification times out while the owner is still working on it, on real
//! RADOS (issue 10, defect 6; the in-memory version is
//! row-layer/tests/owner_requests.rs). The owner's header writes are slowed
//! down by a wrapper (1.5 s each) so that a 1 s request timeout (RADOS
//! counts notify timeouts in whole seconds) always expires first.
//!
//! Needs `CEPH_CONF` (see rados_conformance.rs); fails loudly without it.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/slow_backend/mod.rs"]
mod slow_backend;

use common::{pattern, small_opts, OBJ};
use row_layer::backend::Backend;
use row_layer::{ImageOptions, OwnerRequest, Store};
use row_rados::{ClusterConfig, RadosCluster};
use slow_backend::Slow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

async fn pool(client: &str, ns: &str) -> Arc<dyn Backend> {
    let conf = std::env::var("CEPH_CONF").unwrap_or_else(|_| {
        panic!(
            "CEPH_CONF is not set: start the test cluster with \
             `tests/ceph/cluster.sh start && eval \"$(tests/ceph/cluster.sh env)\"`"
        )
    });
    let config = ClusterConfig {
        conf_path: Some(conf.clone().into()),
        client_name: Some(client.to_string()),
        options: vec![("client_mount_timeout".into(), "15".into())],
        ..ClusterConfig::default()
    };
    let cluster = RadosCluster::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to CEPH_CONF={conf} as {client}: {e}"));
    Arc::new(cluster.open_pool("rbd", ns).await.expect("open pool"))
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("row-once-{tag}-{}-{nanos}", std::process::id())
}

/// Header writes (while slowed) of one remote `snap create`, answered in
/// time (`request_timeout` long) or not (1 s); and its result.
async fn remote_snap_create(
    request_timeout: Duration,
) -> (u64, row_layer::Result<()>, Vec<String>) {
    let ns = unique("snap");
    let slow = Slow::new(pool("client.admin", &ns).await);
    let opts = ImageOptions {
        request_timeout,
        ..ImageOptions::default()
    };
    let a = Store::new(slow.clone() as Arc<dyn Backend>).with_image_options(opts.clone());
    let b = Store::new(pool("client.rbdrow", &ns).await).with_image_options(opts);
    a.create("img", small_opts(2 * OBJ)).await.expect("create");
    let owner = a.open("img").await.expect("open");
    owner.write(0, pattern(1, 8192)).await.expect("write");
    owner.snap_create("base").await.expect("base snapshot");
    slow.delay_ms.store(1500, Ordering::SeqCst);
    slow.delay_headers.store(true, Ordering::SeqCst);
    let r = b.execute("img", OwnerRequest::SnapCreate("s".into())).await;
    // Let anything a re-sent copy started finish.
    tokio::time::sleep(Duration::from_secs(5)).await;
    slow.delay_headers.store(false, Ordering::SeqCst);
    let names = owner.snap_list().into_iter().map(|s| s.name).collect();
    owner.close().await.expect("close");
    (slow.header_ops.load(Ordering::SeqCst), r, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn a_timed_out_request_runs_once_on_rados() {
    let (once, r, names) = remote_snap_create(Duration::from_secs(30)).await;
    r.expect("in time");
    assert_eq!(names, ["base", "s"]);
    let (ran, r, names) = remote_snap_create(Duration::from_secs(1)).await;
    r.expect("the request's own result, not a false 'exists'");
    assert_eq!(
        ran, once,
        "header writes: {ran} after time-outs, {once} for one run"
    );
    assert_eq!(names, ["base", "s"]);
}

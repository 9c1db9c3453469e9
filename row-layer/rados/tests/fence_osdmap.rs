//! Fencing waits for the OSD map that carries the blocklist entry before it
//! returns, so that the lock can be broken safely (issue 10, defect 5).
//!
//! Librados exposes no OSD map epoch of a client (its objecter perf
//! counters stay 0), so the check is that `fence` went through the
//! handle's wait for the latest map, then the fence's effect: the lock is
//! broken, the fencer writes, and the fenced client's next write fails with
//! `Fenced`.
//!
//! Needs `CEPH_CONF` (see rados_conformance.rs); fails loudly without it.

use bytes::Bytes;
use row_layer::backend::{Backend, WriteOp};
use row_layer::ErrorKind;
use row_rados::{ClusterConfig, RadosBackend, RadosCluster};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

async fn connect(options: Vec<(String, String)>) -> RadosCluster {
    let conf = std::env::var("CEPH_CONF").unwrap_or_else(|_| {
        panic!(
            "CEPH_CONF is not set: start the test cluster with \
             `tests/ceph/cluster.sh start && eval \"$(tests/ceph/cluster.sh env)\"`"
        )
    });
    let mut opts = vec![("client_mount_timeout".to_string(), "15".to_string())];
    opts.extend(options);
    RadosCluster::connect(ClusterConfig {
        conf_path: Some(conf.clone().into()),
        client_name: Some("client.admin".into()),
        options: opts,
        ..ClusterConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("cannot connect to CEPH_CONF={conf}: {e}"))
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("row-fence-{tag}-{}-{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn fence_returns_once_the_fencer_has_the_blocklist_map() {
    let ns = unique("osdmap");
    // The victim: a live client holding a lock.
    let victim: RadosBackend = connect(Vec::new())
        .await
        .open_pool("rbd", &ns)
        .await
        .expect("open pool");
    victim
        .operate(
            "obj",
            WriteOp::new().write_full(Bytes::from_static(b"victim")),
        )
        .await
        .expect("victim writes");
    victim
        .lock_exclusive("obj", "owner", "victim-cookie", "test")
        .await
        .expect("victim locks");
    let fencer_cluster = connect(Vec::new()).await;
    let fencer = fencer_cluster
        .open_pool("rbd", &ns)
        .await
        .expect("open pool");
    fencer.stat("obj").await.expect("fencer is up to date");
    let before = fencer_cluster.osdmap_waits();
    let owner = fencer
        .lock_owners("obj", "owner")
        .await
        .expect("owners")
        .into_iter()
        .next()
        .expect("the victim holds the lock");
    fencer.fence(&owner).await.expect("fence");
    assert_eq!(
        fencer_cluster.osdmap_waits(),
        before + 1,
        "fence must wait for the OSD map carrying the blocklist entry before it returns"
    );
    // Now the lock can be broken, and the fenced client can do nothing.
    fencer
        .break_lock("obj", "owner", &owner)
        .await
        .expect("break lock");
    fencer
        .operate(
            "obj",
            WriteOp::new().write_full(Bytes::from_static(b"fencer")),
        )
        .await
        .expect("the fencer writes");
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        victim.operate(
            "obj",
            WriteOp::new().write_full(Bytes::from_static(b"late")),
        ),
    )
    .await
    .expect("the fenced client's write must fail, not hang")
    .expect_err("the fenced client's write must fail");
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
    assert_eq!(
        fencer.read("obj", 0, 16).await.expect("read"),
        Bytes::from_static(b"fencer")
    );
    fencer_cluster
        .blocklist_rm(&owner.address)
        .await
        .expect("unblock the victim's address");
    fencer
        .operate("obj", WriteOp::remove())
        .await
        .expect("cleanup");
}

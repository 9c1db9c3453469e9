//! A pool over its quota: the backend fails writes with `NoSpace` instead
//! of letting librados hold them (issue 10), and still deletes, zeroes,
//! reads, locks and watches.
//!
//! A pool of its own gets `max_bytes 1` after one object is written, so the
//! monitors flag it full (`full,full_quota`) at their next usage report.
//! Then, on that pool:
//! - a write sent by a backend that does not know yet is cancelled after
//!   it has waited (not left to `rados_osd_op_timeout`), as is a guarded
//!   one (whose cancellation must not read as a failed guard), and neither
//!   is applied;
//! - later writes are refused before they are sent;
//! - removals, zeroing, truncation and omap removal go through (deleting
//!   frees space), as do reads, locking and watches;
//! - once the quota is lifted, writes work again.
//!
//! Needs the test cluster (`tests/ceph/cluster.sh start; eval
//! "$(tests/ceph/cluster.sh env)"`); run by tests/run-all.sh's `--ignored`
//! stage.

use bytes::Bytes;
use row_layer::backend::{Action, Backend, Guard, WriteOp};
use row_layer::{ErrorKind, Result};
use row_rados::{ClusterConfig, RadosBackend, RadosCluster};
use std::time::{Duration, Instant};

/// Longest wait for the monitors to flag or unflag the pool, and for a
/// stalled write to fail (the backend needs about 3 s; librados alone
/// would hold it for `rados_osd_op_timeout`, 120 s).
const BOUND: Duration = Duration::from_secs(60);

async fn connect() -> RadosCluster {
    let conf = std::env::var("CEPH_CONF").unwrap_or_else(|_| {
        panic!(
            "CEPH_CONF is not set: start the test cluster with \
             `tests/ceph/cluster.sh start && eval \"$(tests/ceph/cluster.sh env)\"`"
        )
    });
    let config = ClusterConfig {
        conf_path: Some(conf.clone().into()),
        client_name: Some("client.admin".into()),
        options: vec![("client_mount_timeout".into(), "15".into())],
        ..ClusterConfig::default()
    };
    RadosCluster::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to CEPH_CONF={conf}: {e}"))
}

async fn mon(cluster: &RadosCluster, json: &str) {
    cluster
        .mon_command(json)
        .await
        .unwrap_or_else(|e| panic!("mon command {json}: {e}"));
}

async fn set_quota(cluster: &RadosCluster, pool: &str, bytes: u64) {
    let cmd = format!(
        r#"{{"prefix":"osd pool set-quota","pool":"{pool}","field":"max_bytes","val":"{bytes}"}}"#
    );
    mon(cluster, &cmd).await;
}

/// Whether the OSD map flags `pool` full, as the monitors see it.
async fn flagged_full(cluster: &RadosCluster, pool: &str) -> bool {
    let (out, _) = cluster
        .mon_command(r#"{"prefix":"osd pool ls","detail":"detail","format":"json"}"#)
        .await
        .expect("osd pool ls detail");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    v.as_array()
        .expect("pools")
        .iter()
        .find(|p| p["pool_name"] == pool)
        .and_then(|p| p["flags_names"].as_str())
        .is_some_and(|f| f.split(',').any(|n| n == "full"))
}

async fn wait_flag(cluster: &RadosCluster, pool: &str, full: bool) {
    let t0 = Instant::now();
    while flagged_full(cluster, pool).await != full {
        assert!(
            t0.elapsed() < BOUND,
            "pool {pool} not flagged full={full} within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Removes the pool however the test ends.
struct PoolGuard(String);

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let pool = &self.0;
        for args in [
            vec!["osd", "pool", "set-quota", pool, "max_bytes", "0"],
            vec![
                "osd",
                "pool",
                "rm",
                pool,
                pool,
                "--yes-i-really-really-mean-it",
            ],
        ] {
            let _ = std::process::Command::new("timeout")
                .arg("30")
                .arg("ceph")
                .args(&args)
                .status();
        }
    }
}

fn kind(r: &Result<()>) -> Option<ErrorKind> {
    r.as_ref().err().map(|e| e.kind())
}

async fn exists(b: &RadosBackend, oid: &str) -> bool {
    match b.stat(oid).await {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => panic!("stat {oid}: {e}"),
    }
}

fn data(len: usize, byte: u8) -> Bytes {
    Bytes::from(vec![byte; len])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running test cluster); run by tests/run-all.sh"]
async fn full_pool_fails_writes_and_still_deletes() {
    let cluster = connect().await;
    let pool = format!("rowfull{}", std::process::id());
    mon(
        &cluster,
        &format!(r#"{{"prefix":"osd pool create","pool":"{pool}","pg_num":8}}"#),
    )
    .await;
    let _guard = PoolGuard(pool.clone());
    mon(
        &cluster,
        &format!(r#"{{"prefix":"osd pool application enable","pool":"{pool}","app":"rbd"}}"#),
    )
    .await;
    let b = cluster.open_pool(&pool, "").await.expect("open pool");

    // Before the quota: objects to delete, zero, lock and watch later.
    b.operate(
        "keep",
        WriteOp::new().action(Action::WriteFull(data(1 << 20, 1))),
    )
    .await
    .expect("write keep");
    b.operate(
        "meta",
        WriteOp::new()
            .action(Action::WriteFull(data(4096, 2)))
            .action(Action::SetXattr("owner".into(), Bytes::from_static(b"me")))
            .action(Action::OmapSet(vec![(
                "k".into(),
                Bytes::from_static(b"v"),
            )])),
    )
    .await
    .expect("write meta");
    b.operate(
        "gone",
        WriteOp::new().action(Action::WriteFull(data(1 << 20, 3))),
    )
    .await
    .expect("write gone");

    set_quota(&cluster, &pool, 1).await;
    wait_flag(&cluster, &pool, true).await;
    // This client's OSD map has the flag too: librados now holds writes.
    cluster.wait_for_latest_osdmap().await.expect("osdmap");

    // A backend that has not read the flag yet sends its writes; they wait
    // in librados and are cancelled, guarded or not.
    let fresh = cluster.open_pool(&pool, "").await.expect("open pool again");
    assert!(!fresh.pool_full_stats().known_full);
    let t0 = Instant::now();
    let new_obj = fresh.operate(
        "new",
        WriteOp::new().action(Action::Write {
            offset: 0,
            data: data(4096, 4),
        }),
    );
    let guarded = fresh.operate(
        "meta",
        WriteOp::new()
            .guard(Guard::XattrEquals(
                "owner".into(),
                Bytes::from_static(b"me"),
            ))
            .action(Action::OmapSet(vec![(
                "k2".into(),
                Bytes::from_static(b"v2"),
            )])),
    );
    let (r1, r2) = tokio::time::timeout(BOUND, futures::future::join(new_obj, guarded))
        .await
        .unwrap_or_else(|_| panic!("writes to the full pool still waiting after {BOUND:?}"));
    let waited = t0.elapsed();
    assert_eq!(kind(&r1), Some(ErrorKind::NoSpace), "{r1:?}");
    assert_eq!(kind(&r2), Some(ErrorKind::NoSpace), "{r2:?}");
    let msg = r1.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("quota exceeded") && msg.contains(&pool),
        "{msg}"
    );
    let stats = fresh.pool_full_stats();
    assert!(stats.known_full && stats.cancelled >= 2, "{stats:?}");
    assert_eq!(fresh.cancellable_writes(), 0);
    eprintln!("pool_full: waiting writes cancelled after {waited:?} ({stats:?})");
    // Neither was applied.
    assert!(!exists(&b, "new").await);
    let omap = b.omap_get("meta", "", "", 10).await.expect("omap");
    assert_eq!(omap.len(), 1, "{omap:?}");

    // Later writes are refused before they are sent.
    let r = fresh
        .operate(
            "new2",
            WriteOp::new().action(Action::Write {
                offset: 0,
                data: data(512, 5),
            }),
        )
        .await;
    assert_eq!(kind(&r), Some(ErrorKind::NoSpace), "{r:?}");
    assert!(fresh.pool_full_stats().refused >= 1);
    assert!(!exists(&b, "new2").await);

    // Whole-object rewrites: applied if not larger, refused (by the OSD,
    // without waiting) if they grow the pool.
    let t0 = Instant::now();
    let r = fresh
        .operate(
            "rec",
            WriteOp::new().action(Action::WriteFull(data(4096, 7))),
        )
        .await;
    assert_eq!(kind(&r), Some(ErrorKind::NoSpace), "{r:?}");
    assert!(!exists(&b, "rec").await);
    let owner = || Guard::XattrEquals("owner".into(), Bytes::from_static(b"me"));
    let r = fresh
        .operate(
            "meta",
            WriteOp::new()
                .guard(owner())
                .action(Action::WriteFull(data(8192, 8))),
        )
        .await;
    assert_eq!(kind(&r), Some(ErrorKind::NoSpace), "{r:?}");
    fresh
        .operate(
            "meta",
            WriteOp::new()
                .guard(owner())
                .action(Action::WriteFull(data(1024, 9))),
        )
        .await
        .expect("a smaller rewrite on the full pool");
    fresh
        .operate(
            "meta",
            WriteOp::new().action(Action::SetXattr(
                "owner2".into(),
                Bytes::from_static(b"you"),
            )),
        )
        .await
        .expect("an xattr on the full pool");
    let waited = t0.elapsed();
    assert!(waited < BOUND, "rewrites waited {waited:?}");
    assert_eq!(
        &b.read("meta", 0, 4096).await.expect("read")[..],
        &[9u8; 1024][..]
    );

    // Reads, deletes, zeroing, truncation and omap removal go through.
    let got = b.read("keep", 0, 16).await.expect("read");
    assert_eq!(&got[..], &[1u8; 16][..]);
    let ops = [
        ("gone", WriteOp::new().action(Action::Remove)),
        (
            "keep",
            WriteOp::new().action(Action::Zero {
                offset: 0,
                len: 4096,
            }),
        ),
        ("keep", WriteOp::new().action(Action::Truncate(8192))),
        (
            "meta",
            WriteOp::new()
                .guard(Guard::XattrEquals(
                    "owner".into(),
                    Bytes::from_static(b"me"),
                ))
                .action(Action::OmapRemove(vec!["k".into()])),
        ),
    ];
    for (oid, op) in ops {
        let shown = format!("{op:?} on {oid}");
        tokio::time::timeout(BOUND, fresh.operate(oid, op))
            .await
            .unwrap_or_else(|_| panic!("{shown} waits on the full pool"))
            .unwrap_or_else(|e| panic!("{shown}: {e}"));
    }
    assert!(!exists(&b, "gone").await);
    assert_eq!(b.stat("keep").await.expect("stat keep").size, 8192);
    assert!(b
        .omap_get("meta", "", "", 10)
        .await
        .expect("omap")
        .is_empty());

    // Locking and watches (writes to librados) work on the full pool.
    let locking = async {
        fresh.lock_exclusive("meta", "l", "c1", "test").await?;
        let owners = fresh.lock_owners("meta", "l").await?;
        assert_eq!(owners.len(), 1);
        fresh.unlock("meta", "l", "c1").await?;
        let w = fresh.watch("meta").await?;
        fresh.unwatch(w.id).await
    };
    tokio::time::timeout(BOUND, locking)
        .await
        .expect("locking or watching waits on the full pool")
        .expect("locking and watching on the full pool");

    // Once the quota is lifted, writes work again.
    set_quota(&cluster, &pool, 0).await;
    wait_flag(&cluster, &pool, false).await;
    let t0 = Instant::now();
    loop {
        let r = tokio::time::timeout(
            BOUND,
            fresh.operate(
                "new",
                WriteOp::new()
                    .action(Action::Write {
                        offset: 0,
                        data: data(4096, 6),
                    })
                    .action(Action::OmapSet(vec![("g".into(), Bytes::new())])),
            ),
        )
        .await
        .expect("write after the quota was lifted waits");
        match r {
            Ok(()) => break,
            Err(e) if e.kind() == ErrorKind::NoSpace && t0.elapsed() < BOUND => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("write after the quota was lifted: {e}"),
        }
    }
    assert!(!fresh.pool_full_stats().known_full);
    assert_eq!(&b.read("new", 0, 4).await.expect("read")[..], &[6u8; 4][..]);
}

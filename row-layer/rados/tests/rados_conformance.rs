//! The backend conformance suite and RADOS-specific checks, against a real
//! cluster.
//!
//! Needs `CEPH_CONF` pointing at a running cluster with a pool `rbd` and the
//! users `client.admin` and `client.rbdrow`, e.g. the throwaway one of
//! `tests/ceph/cluster.sh`:
//!
//! ```sh
//! tests/ceph/cluster.sh start && eval "$(tests/ceph/cluster.sh env)"
//! cargo test -p row-rados --test rados_conformance -- --ignored
//! ```
//!
//! Every cluster test here is `#[ignore]`d, as in the other RADOS test files
//! (tests/run-all.sh runs them with `--ignored` against its cluster). Run
//! with `--ignored` but without a reachable cluster, every one of them FAILS
//! (none skips): a green run must mean the RADOS backend was exercised. Each
//! test works in its own fresh namespace of the pool. The conformance suite
//! runs one test per check and client (`rados_admin::zero_to_object_end`,
//! `rados_rbdrow::locks`, ...).

use bytes::Bytes;
use futures::FutureExt;
use row_layer::backend::{conformance, Action, Backend, Guard, WriteOp};
use row_layer::ErrorKind;
use row_rados::{ClusterConfig, RadosBackend, RadosCluster};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const POOL: &str = "rbd";

async fn connect(client: &str) -> RadosCluster {
    connect_with(client, true).await
}

/// `explicit_conf`: pass CEPH_CONF as `conf_path`; otherwise leave it to
/// librados' own lookup (which reads CEPH_CONF).
async fn connect_with(client: &str, explicit_conf: bool) -> RadosCluster {
    let conf = std::env::var("CEPH_CONF").unwrap_or_else(|_| {
        panic!(
            "CEPH_CONF is not set: these tests need a Ceph cluster. Start the throwaway one with \
             `tests/ceph/cluster.sh start && eval \"$(tests/ceph/cluster.sh env)\"`"
        )
    });
    let config = ClusterConfig {
        conf_path: explicit_conf.then(|| conf.clone().into()),
        client_name: Some(client.to_string()),
        options: vec![
            // Fail in seconds, not librados' default 5 minutes.
            ("client_mount_timeout".into(), "15".into()),
            ("rados_mon_op_timeout".into(), "60".into()),
            ("rados_osd_op_timeout".into(), "60".into()),
        ],
        ..ClusterConfig::default()
    };
    match tokio::time::timeout(Duration::from_secs(30), RadosCluster::connect(config)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("cannot connect to the cluster of CEPH_CONF={conf} as {client}: {e}"),
        Err(_) => panic!("connecting to the cluster of CEPH_CONF={conf} as {client} timed out"),
    }
}

/// Removes every object of the backend's namespace.
async fn cleanup(be: &RadosBackend) {
    for o in be.list("").await.expect("list for cleanup") {
        be.operate(&o, WriteOp::remove())
            .await
            .expect("cleanup remove");
    }
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("row-test-{tag}-{}-{nanos}", std::process::id())
}

async fn backend(client: &str, tag: &str) -> RadosBackend {
    backend_with(client, tag, true).await
}

async fn backend_with(client: &str, tag: &str, explicit_conf: bool) -> RadosBackend {
    let cluster = connect_with(client, explicit_conf).await;
    let ns = unique(tag);
    cluster
        .open_pool(POOL, &ns)
        .await
        .unwrap_or_else(|e| panic!("cannot open pool {POOL} namespace {ns}: {e}"))
}

/// A fresh namespace as `client.admin`.
async fn fresh_admin() -> (Arc<dyn Backend>, ()) {
    (Arc::new(backend("client.admin", "conf-admin").await), ())
}

/// A fresh namespace as `client.rbdrow`: mon 'profile rbd' osd 'profile rbd
/// pool=rbd' must be enough for the whole contract (locks, watch/notify,
/// omap, listing).
async fn fresh_rbdrow() -> (Arc<dyn Backend>, ()) {
    (Arc::new(backend("client.rbdrow", "conf-rbdrow").await), ())
}

// One test per conformance check and client: `rados_admin::locks`, ...
row_layer::backend_conformance_tests!(
    rados_admin,
    [
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
    ],
    fresh_admin
);
row_layer::backend_conformance_tests!(
    rados_rbdrow,
    [
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
    ],
    fresh_rbdrow
);

/// The RADOS entry of `conformance::Allowances` matches what the cluster
/// does. A `Zero` ending exactly at the object's end truncates, like one
/// reaching past it (measured on Ceph 16.2.15; DESIGN.md had RADOS write
/// zeros there), so RADOS needs no `zero_to_exact_end_keeps_size`. An
/// `XattrEquals(name, "")` guard holds on an existing object without the
/// xattr, so it needs `xattr_equals_empty_matches_absent`. If either
/// assertion fails after a Ceph upgrade, change the allowance with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn allowances_match_measured_rados_behaviour() {
    let allow = conformance::Allowances::for_kind("rados");
    let be = backend("client.admin", "allowances").await;
    for (offset, len) in [(8u64, 8u64), (0, 16), (4, 13)] {
        let o = format!("z{offset}+{len}");
        be.operate(&o, WriteOp::new().write_full(Bytes::from(vec![7u8; 16])))
            .await
            .unwrap();
        be.operate(&o, WriteOp::new().action(Action::Zero { offset, len }))
            .await
            .unwrap();
        let size = be.stat(&o).await.unwrap().size;
        eprintln!("zero {offset}+{len} of a 16-byte object: size {size}");
        assert_eq!(size, offset, "zero {offset}+{len} truncates");
    }
    assert!(!allow.zero_to_exact_end_keeps_size);
    be.operate("x", WriteOp::new().action(Action::Create))
        .await
        .unwrap();
    let r = be
        .operate(
            "x",
            WriteOp::new()
                .guard(Guard::XattrEquals("absent".into(), Bytes::new()))
                .write(0, Bytes::from_static(b"a")),
        )
        .await;
    eprintln!("XattrEquals(absent, \"\") on an existing object: {r:?}");
    assert!(r.is_ok(), "{r:?}");
    assert!(allow.xattr_equals_empty_matches_absent);
    cleanup(&be).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn many_concurrent_4k_writes() {
    let be = backend("client.admin", "conc").await;
    const N: u64 = 256;
    const OBJECTS: u64 = 16;
    const BS: u64 = 4096;
    let block = |i: u64| {
        let mut v = vec![0u8; BS as usize];
        for (j, b) in v.iter_mut().enumerate() {
            *b = (i as u8) ^ (j as u8);
        }
        v[..8].copy_from_slice(&i.to_le_bytes());
        Bytes::from(v)
    };
    let place = |i: u64| (format!("obj.{}", i % OBJECTS), (i / OBJECTS) * BS);
    let mut rounds = Vec::new();
    for round in 0..4 {
        let t = Instant::now();
        // All N futures are in flight at once (one task, join_all).
        let writes = (0..N).map(|i| {
            let (oid, off) = place(i);
            let be = &be;
            let data = block(i + round * N);
            async move { be.operate(&oid, WriteOp::new().write(off, data)).await }
        });
        for r in futures::future::join_all(writes).await {
            r.expect("concurrent write");
        }
        rounds.push(t.elapsed());
        let reads = (0..N).map(|i| {
            let (oid, off) = place(i);
            let be = &be;
            async move { be.read(&oid, off, BS).await }
        });
        for (i, r) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let got = r.expect("read back");
            assert_eq!(
                got,
                block(i as u64 + round * N),
                "block {i} of round {round}"
            );
        }
    }
    for o in 0..OBJECTS {
        let st = be.stat(&format!("obj.{o}")).await.expect("stat");
        assert_eq!(st.size, (N / OBJECTS) * BS);
    }
    let best = rounds.iter().min().copied().unwrap_or_default();
    eprintln!(
        "{N} concurrent 4 KiB writes: rounds {rounds:?}, best {best:?} = {:.0} IOPS",
        N as f64 / best.as_secs_f64()
    );
    // For comparison: one write at a time.
    let t = Instant::now();
    for i in 0..100u64 {
        be.operate("serial", WriteOp::new().write(i * BS, block(i)))
            .await
            .expect("serial write");
    }
    eprintln!("serial 4 KiB writes: {:?} each", t.elapsed() / 100);
    cleanup(&be).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn omap_paging_beyond_the_osd_page_limit() {
    let be = backend("client.admin", "omap").await;
    let o = "big-omap";
    let kvs: Vec<(String, Bytes)> = (0..2500)
        .map(|i| (format!("k{i:05}"), Bytes::from(format!("v{i}"))))
        .chain((0..10).map(|i| (format!("z{i}"), Bytes::from_static(b"z"))))
        .collect();
    be.operate(o, WriteOp::new().action(Action::OmapSet(kvs)))
        .await
        .unwrap();
    // The OSD returns at most ~1024 entries per call; max is still honoured.
    let got = be.omap_get(o, "", "k", 2000).await.unwrap();
    assert_eq!(got.len(), 2000);
    assert_eq!(got[1999].0, "k01999");
    let got = be.omap_get(o, "", "k", 100_000).await.unwrap();
    assert_eq!(got.len(), 2500);
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    let got = be.omap_get(o, "k02400", "", usize::MAX).await.unwrap();
    assert_eq!(got.len(), 99 + 10);
    assert_eq!(got[0], ("k02401".to_string(), Bytes::from_static(b"v2401")));
    assert!(be.omap_get(o, "", "k", 0).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn large_and_unbounded_reads() {
    let be = backend("client.admin", "large").await;
    let data: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
    be.operate("big", WriteOp::new().write_full(Bytes::from(data.clone())))
        .await
        .unwrap();
    let got = be.read("big", 0, u64::MAX).await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    let got = be.read("big", 1 << 20, u64::MAX).await.unwrap();
    assert_eq!(got.len(), data.len() - (1 << 20));
    assert!(be.read("big", 1 << 30, u64::MAX).await.unwrap().is_empty());
    assert_eq!(
        be.read("nope", 0, u64::MAX).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        be.read("nope", 0, 0).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn guards_map_to_the_failing_guard() {
    let be = backend("client.admin", "guards").await;
    let o = "g";
    // Guard-only ops check without creating anything.
    be.operate(o, WriteOp::new().guard(Guard::NotExists))
        .await
        .unwrap();
    assert!(
        be.list("").await.unwrap().is_empty(),
        "guard-only op created an object"
    );
    assert_eq!(
        be.operate(o, WriteOp::new().guard(Guard::Exists))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    // Version 0 means "does not exist".
    be.operate(
        o,
        WriteOp::new()
            .guard(Guard::VersionEquals(0))
            .write(0, Bytes::from_static(b"a")),
    )
    .await
    .unwrap();
    assert_eq!(
        be.operate(
            o,
            WriteOp::new()
                .guard(Guard::VersionEquals(0))
                .write(0, Bytes::from_static(b"b"))
        )
        .await
        .unwrap_err()
        .kind(),
        ErrorKind::PreconditionFailed
    );
    // Version guard against a missing object.
    assert_eq!(
        be.operate(
            "missing",
            WriteOp::new()
                .guard(Guard::VersionEquals(5))
                .write(0, Bytes::new())
        )
        .await
        .unwrap_err()
        .kind(),
        ErrorKind::PreconditionFailed
    );
    // Xattr guard against a missing object, and a lower version.
    assert_eq!(
        be.operate(
            "missing",
            WriteOp::new()
                .guard(Guard::XattrEquals("x".into(), Bytes::from_static(b"1")))
                .write(0, Bytes::new())
        )
        .await
        .unwrap_err()
        .kind(),
        ErrorKind::PreconditionFailed
    );
    let v = be.stat(o).await.unwrap().version;
    assert_eq!(
        be.operate(
            o,
            WriteOp::new()
                .guard(Guard::VersionEquals(v - 1))
                .write(0, Bytes::new())
        )
        .await
        .unwrap_err()
        .kind(),
        ErrorKind::PreconditionFailed
    );
    be.operate(o, WriteOp::new().guard(Guard::VersionEquals(v)))
        .await
        .unwrap();
    assert_eq!(
        be.operate(o, WriteOp::new().guard(Guard::VersionEquals(v + 1)))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::PreconditionFailed
    );
    assert!(be.list("").await.unwrap() == vec![o.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn dropping_futures_and_handles_mid_flight_is_safe() {
    let cluster = connect("client.admin").await;
    let ns = unique("drop");
    for round in 0..3 {
        let be = cluster.open_pool(POOL, &ns).await.unwrap();
        let data = Bytes::from(vec![round as u8; 64 << 10]);
        // Submit (first poll) and drop at once: the state belongs to the
        // completion callback, which frees it.
        for i in 0..64 {
            let w = be.operate(&format!("o{i}"), WriteOp::new().write_full(data.clone()));
            assert!(
                w.now_or_never().is_none(),
                "a write completed synchronously"
            );
            let r = be.read(&format!("o{}", i / 2), 0, 64 << 10);
            let _ = r.now_or_never();
            let s = be.omap_get(&format!("o{}", i / 2), "", "", 10);
            let _ = s.now_or_never();
        }
        // Dropping the backend with operations in flight keeps the ioctx
        // alive until they complete.
        drop(be);
    }
    // A separate cluster handle dropped with operations in flight: the last
    // completion shuts librados down, off its callback thread.
    {
        let c2 = connect("client.admin").await;
        let be2 = c2.open_pool(POOL, &ns).await.unwrap();
        drop(c2);
        for i in 0..32 {
            let w = be2.operate(
                &format!("p{i}"),
                WriteOp::new().write_full(Bytes::from_static(b"x")),
            );
            let _ = w.now_or_never();
        }
        drop(be2);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let be = cluster.open_pool(POOL, &ns).await.unwrap();
    let mut names = be.list("o").await.unwrap();
    names.sort();
    assert_eq!(names.len(), 64, "every dropped write still completed");
    for n in &names {
        assert_eq!(be.stat(n).await.unwrap().size, 64 << 10);
    }
    assert_eq!(be.list("p").await.unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn notify_leaves_out_silent_watchers() {
    let be = backend("client.admin", "notify").await;
    let o = "hdr";
    be.operate(o, WriteOp::new().action(Action::Create))
        .await
        .unwrap();
    let mut answering = be.watch(o).await.unwrap();
    let mut silent = be.watch(o).await.unwrap();
    let responder = tokio::spawn(async move {
        let n = answering.events.recv().await.expect("notification");
        n.reply.send(Bytes::from_static(b"ack")).unwrap();
        answering
    });
    let holder = tokio::spawn(async move {
        let n = silent.events.recv().await.expect("notification");
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(n);
        silent
    });
    let t = Instant::now();
    let reply = be
        .notify_raw(o, Bytes::from_static(b"hello"), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(reply.acks.len(), 1, "{reply:?}");
    assert_eq!(reply.acks[0].payload, Bytes::from_static(b"ack"));
    assert_eq!(reply.timeouts.len(), 1, "{reply:?}");
    assert!(t.elapsed() >= Duration::from_secs(2));
    let (a, s) = (responder.await.unwrap(), holder.await.unwrap());
    be.unwatch(a.id).await.unwrap();
    // A dropped reply acknowledges with an empty payload.
    let mut s = s;
    let dropper = tokio::spawn(async move {
        let n = s.events.recv().await.expect("notification");
        drop(n);
        s
    });
    let replies = be
        .notify(o, Bytes::new(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(replies, vec![Bytes::new()]);
    let s = dropper.await.unwrap();
    be.unwatch(s.id).await.unwrap();
    // No watchers left.
    assert!(be
        .notify(o, Bytes::new(), Duration::from_secs(5))
        .await
        .unwrap()
        .is_empty());
    // Watching a missing object fails.
    assert_eq!(
        be.watch("nope").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn locks_between_two_clients_and_fencing() {
    let ns = unique("fence");
    // The restricted client (mon 'profile rbd') fences the other one, as a
    // gateway taking over an image would.
    let c1 = connect("client.rbdrow").await;
    let c2 = connect("client.admin").await;
    let b1 = c1.open_pool(POOL, &ns).await.unwrap();
    let b2 = c2.open_pool(POOL, &ns).await.unwrap();
    b2.lock_exclusive("hdr", "owner", "c2", "second client")
        .await
        .unwrap();
    assert_eq!(
        b1.lock_exclusive("hdr", "owner", "c1", "first")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Busy
    );
    let owners = b1.lock_owners("hdr", "owner").await.unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].client, format!("client.{}", c2.instance_id()));
    let addr = c2.instance_addr().unwrap();
    eprintln!(
        "client 2: {} at {addr}, locker address {}",
        owners[0].client, owners[0].address
    );
    assert!(!addr.is_empty());
    // Fence client 2, break its lock, take over.
    c1.blocklist_add(&addr).await.unwrap();
    b1.break_lock("hdr", "owner", &owners[0]).await.unwrap();
    b1.lock_exclusive("hdr", "owner", "c1", "first")
        .await
        .unwrap();
    let t = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        b2.operate("data", WriteOp::new().write(0, Bytes::from_static(b"late"))),
    )
    .await
    .expect("fenced write did not return")
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
    eprintln!("fenced write failed after {:?}: {err}", t.elapsed());
    assert_eq!(
        b1.read("data", 0, 4).await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "the fenced write must not land"
    );
    b1.unlock("hdr", "owner", "c1").await.unwrap();
    cleanup(&b1).await;
    // Only an admin may lift the blocklist entry.
    connect("client.admin")
        .await
        .blocklist_rm(&addr)
        .await
        .unwrap();
}

/// The observable state of one object (data, omap, one xattr), or None.
async fn snapshot(
    be: &dyn Backend,
    o: &str,
) -> Option<(Bytes, Vec<(String, Bytes)>, Option<Bytes>)> {
    let data = match be.read(o, 0, 1 << 20).await {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => panic!("read {o}: {e}"),
    };
    let omap = be.omap_get(o, "", "", 1000).await.expect("omap");
    let x = be.get_xattr(o, "x").await.expect("xattr");
    Some((data, omap, x))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn same_results_as_the_reference_backend() {
    use row_layer::backend::mem::MemBackend;
    let rados = backend("client.admin", "diff").await;
    let b = |s: &'static [u8]| Bytes::from_static(s);
    let w = || Action::Write {
        offset: 2,
        data: b(b"WW"),
    };
    let actions: Vec<Vec<Action>> = vec![
        vec![Action::RemoveXattr("x".into())],
        vec![Action::RemoveXattr("nope".into())],
        vec![Action::OmapRemove(vec!["a".into(), "zz".into()])],
        vec![Action::OmapClear],
        vec![Action::Zero { offset: 4, len: 4 }],
        vec![Action::Zero {
            offset: 8,
            len: 100,
        }],
        vec![Action::Zero {
            offset: 100,
            len: 4,
        }],
        vec![Action::Truncate(4)],
        vec![Action::Truncate(32)],
        vec![Action::Create],
        vec![Action::Remove],
        vec![Action::Remove, w()],
        vec![w(), Action::Remove],
        vec![Action::SetXattr("x".into(), b(b"2"))],
        vec![Action::OmapSet(vec![("b".into(), b(b"2"))])],
        vec![Action::WriteFull(b(b""))],
        vec![],
    ];
    let guards: Vec<Vec<Guard>> = vec![
        vec![],
        vec![Guard::Exists],
        vec![Guard::NotExists],
        vec![Guard::XattrEquals("x".into(), b(b"1"))],
        vec![Guard::XattrEquals("x".into(), b(b"2"))],
        vec![Guard::VersionEquals(0)],
        // Not here: XattrEquals(absent, "") holds on RADOS (documented).
        vec![Guard::Exists, Guard::XattrEquals("x".into(), b(b"1"))],
    ];
    let mut n = 0;
    let mut mismatches = Vec::new();
    for present in [false, true] {
        for g in &guards {
            for a in &actions {
                n += 1;
                let o = format!("o{n}");
                let mem = MemBackend::new();
                let op = WriteOp {
                    guards: g.clone(),
                    actions: a.clone(),
                };
                let mut results = Vec::new();
                for be in [&mem as &dyn Backend, &rados as &dyn Backend] {
                    if present {
                        let init = WriteOp::new()
                            .write_full(b(b"0123456789abcdef"))
                            .omap_set1("a", b(b"1"))
                            .action(Action::SetXattr("x".into(), b(b"1")));
                        be.operate(&o, init).await.expect("initial state");
                    }
                    let r = be.operate(&o, op.clone()).await.map_err(|e| e.kind());
                    results.push((r, snapshot(be, &o).await));
                }
                if results[0] != results[1] {
                    mismatches.push(format!(
                        "present={present} {op:?}:\n  mem:   {:?}\n  rados: {:?}",
                        results[0], results[1]
                    ));
                }
            }
        }
    }
    cleanup(&rados).await;
    assert!(
        mismatches.is_empty(),
        "{} of {n} differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

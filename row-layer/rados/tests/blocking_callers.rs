//! Synchronous callers on RADOS: many threads that are not runtime workers
//! (plain `std::thread`s and `spawn_blocking` threads) drive image reads
//! and writes with `Handle::block_on`, all at once (issue 10, defect 7; the
//! "read driven by Handle::block_on never completed" of DESIGN.md §9).
//!
//! What a `block_on` caller needs (DESIGN.md §9): engine futures may wait
//! for the runtime's tasks (a write's data-path task, the control task that
//! runs snapshots, a shared gate holder): a read queued behind a snapshot
//! waiting for the gate completes only when the runtime runs its tasks. The
//! tests here drive the engine as its synchronous users do, with a runtime
//! whose workers are free: foreign-thread I/O interleaved with snapshots, a
//! chunked export from a `spawn_blocking` thread (the early CLI's export),
//! and whole-image reads that ask librados for more than its in-flight
//! budget (`objecter_inflight_op_bytes`, 100 MiB).
//!
//! Needs `CEPH_CONF` (see rados_conformance.rs); fails loudly without it.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{pattern, OBJ};
use row_layer::backend::Backend;
use row_layer::{CreateOptions, Image, Store};
use row_rados::{ClusterConfig, RadosCluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const THREADS: usize = 16;
const ROUNDS: usize = 20;
/// Per thread: its own 64 KiB lane (one object).
const LANE: u64 = OBJ;
/// The whole test must finish within this; a hung op fails it.
const DEADLINE: Duration = Duration::from_secs(120);

async fn backend(ns: &str) -> Arc<dyn Backend> {
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
    let cluster = RadosCluster::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to CEPH_CONF={conf}: {e}"));
    Arc::new(cluster.open_pool("rbd", ns).await.expect("open pool"))
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("row-blocking-{tag}-{}-{nanos}", std::process::id())
}

/// One synchronous caller: writes and reads back its lane, round after
/// round, each call through `Handle::block_on`.
fn lane_worker(handle: &tokio::runtime::Handle, img: &Image, lane: usize) -> Result<(), String> {
    let base = lane as u64 * LANE;
    for round in 0..ROUNDS {
        let seed = (lane * 1000 + round) as u64;
        // Unaligned, so grain edges take the read-modify-write path.
        let off = base + 512 * (round as u64 % 8);
        let data = pattern(seed, 8192 + 512);
        handle
            .block_on(img.write(off, data.clone()))
            .map_err(|e| format!("lane {lane} round {round}: write: {e}"))?;
        let got = handle
            .block_on(img.read(off, data.len() as u64))
            .map_err(|e| format!("lane {lane} round {round}: read: {e}"))?;
        if got != data {
            return Err(format!("lane {lane} round {round}: read back other bytes"));
        }
        // A read of the whole lane, and one of the whole image (an aio read
        // per object, joined), racing the other callers' writes.
        handle
            .block_on(img.read(base, LANE))
            .map_err(|e| format!("lane {lane} round {round}: lane read: {e}"))?;
        handle
            .block_on(img.read(0, img.size()))
            .map_err(|e| format!("lane {lane} round {round}: image read: {e}"))?;
    }
    Ok(())
}

fn wait_all(done: &mpsc::Receiver<Result<(), String>>, n: usize, what: &str, start: Instant) {
    for i in 0..n {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match done.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!(
                "{what}: only {i} of {n} callers finished within {DEADLINE:?}: \
                 an operation driven by Handle::block_on hung"
            ),
        }
    }
}

#[test]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
fn many_foreign_threads_drive_io_with_handle_block_on() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let handle = rt.handle().clone();
    let ns = unique("threads");
    let img = rt.block_on(async {
        let store = Store::new(backend(&ns).await);
        store
            .create(
                "img",
                CreateOptions {
                    size: THREADS as u64 * LANE,
                    object_size: OBJ,
                    grain_size: 4096,
                },
            )
            .await
            .expect("create");
        store.open("img").await.expect("open")
    });
    let start = Instant::now();

    // Plain threads, outside any runtime context.
    let (tx, done) = mpsc::channel();
    for lane in 0..THREADS / 2 {
        let (handle, img, tx) = (handle.clone(), img.clone(), tx.clone());
        std::thread::spawn(move || {
            let _ = tx.send(lane_worker(&handle, &img, lane));
        });
    }
    // spawn_blocking threads (inside the runtime's context), started from
    // a runtime task that waits for them, as the CLI's export did.
    let (img2, tx2, handle2) = (img.clone(), tx.clone(), handle.clone());
    rt.spawn(async move {
        let mut tasks = Vec::new();
        for lane in THREADS / 2..THREADS {
            let (handle, img) = (handle2.clone(), img2.clone());
            tasks.push(tokio::task::spawn_blocking(move || {
                lane_worker(&handle, &img, lane)
            }));
        }
        for t in tasks {
            let r = t.await.map_err(|e| format!("join: {e}")).and_then(|r| r);
            let _ = tx2.send(r);
        }
    });
    drop(tx);
    wait_all(&done, THREADS, "block_on callers", start);

    rt.block_on(async {
        for lane in 0..THREADS {
            let base = lane as u64 * LANE;
            let last = ROUNDS - 1;
            let data = pattern((lane * 1000 + last) as u64, 8192 + 512);
            let off = base + 512 * (last as u64 % 8);
            let got = img.read(off, data.len() as u64).await.expect("read");
            assert_eq!(got, data, "lane {lane}");
        }
        img.close().await.expect("close");
    });
    eprintln!(
        "{THREADS} synchronous callers done in {:?}",
        start.elapsed()
    );
}

#[test]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
fn spawn_blocking_callers_on_a_current_thread_runtime() {
    // The runtime's only thread waits for the blocking callers; the
    // operations themselves need no tokio driver.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let handle = rt.handle().clone();
    let ns = unique("current");
    let img = rt.block_on(async {
        let store = Store::new(backend(&ns).await);
        store
            .create(
                "img",
                CreateOptions {
                    size: THREADS as u64 * LANE,
                    object_size: OBJ,
                    grain_size: 4096,
                },
            )
            .await
            .expect("create");
        store.open("img").await.expect("open")
    });
    let start = Instant::now();
    let (tx, done) = mpsc::channel();
    let img2 = img.clone();
    let waiter = std::thread::spawn(move || {
        handle.clone().block_on(async move {
            let mut tasks = Vec::new();
            for lane in 0..THREADS {
                let (handle, img) = (handle.clone(), img2.clone());
                tasks.push(tokio::task::spawn_blocking(move || {
                    lane_worker(&handle, &img, lane)
                }));
            }
            for t in tasks {
                let r = t.await.map_err(|e| format!("join: {e}")).and_then(|r| r);
                let _ = tx.send(r);
            }
        })
    });
    // Drive the runtime from its own thread meanwhile (as `#[tokio::main]`
    // with the current-thread flavour would).
    rt.block_on(async {
        let start = Instant::now();
        while !waiter.is_finished() && start.elapsed() < DEADLINE {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    wait_all(&done, THREADS, "current-thread block_on callers", start);
    rt.block_on(img.close()).expect("close");
}

/// A multi-thread runtime like the CLI's (two workers).
fn cli_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn create_open(ns: &str, size: u64, object_size: u64) -> (Store, Image) {
    let store = Store::new(backend(ns).await);
    store
        .create(
            "img",
            CreateOptions {
                size,
                object_size,
                grain_size: 4096,
            },
        )
        .await
        .expect("create");
    let img = store.open("img").await.expect("open");
    (store, img)
}

/// Runs `f` on a thread of its own; panics if it takes longer than
/// `DEADLINE` (a hung `block_on`).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what}: not finished within {DEADLINE:?}"))
}

#[test]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
fn foreign_thread_io_interleaved_with_snapshots() {
    // Snapshot create and remove are control jobs that take the gate
    // exclusively; reads and writes of the foreign threads queue behind
    // them and complete once the control task (a runtime task) is done.
    let rt = cli_runtime();
    let handle = rt.handle().clone();
    let (_store, img) = rt.block_on(create_open(&unique("snaps"), THREADS as u64 * LANE, OBJ));
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let snapper = {
        let (handle, img, stop) = (handle.clone(), img.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("s{n}");
                handle
                    .block_on(img.snap_create(&name))
                    .expect("snap create");
                if n >= 2 {
                    let old = format!("s{}", n - 2);
                    handle.block_on(img.snap_remove(&old)).expect("snap remove");
                }
                n += 1;
            }
            n
        })
    };
    let (tx, done) = mpsc::channel();
    for lane in 0..THREADS / 2 {
        let (handle, img, tx) = (handle.clone(), img.clone(), tx.clone());
        std::thread::spawn(move || {
            let _ = tx.send(lane_worker(&handle, &img, lane));
        });
    }
    let (img2, tx2, handle2) = (img.clone(), tx.clone(), handle.clone());
    rt.spawn(async move {
        let mut tasks = Vec::new();
        for lane in THREADS / 2..THREADS {
            let (handle, img) = (handle2.clone(), img2.clone());
            tasks.push(tokio::task::spawn_blocking(move || {
                lane_worker(&handle, &img, lane)
            }));
        }
        for t in tasks {
            let r = t.await.map_err(|e| format!("join: {e}")).and_then(|r| r);
            let _ = tx2.send(r);
        }
    });
    drop(tx);
    wait_all(&done, THREADS, "block_on callers among snapshots", start);
    stop.store(true, Ordering::Relaxed);
    let snaps = snapper.join().expect("snapshot thread");
    assert!(snaps > 0, "no snapshot was taken while the callers ran");
    rt.block_on(img.close()).expect("close");
    eprintln!(
        "{THREADS} callers and {snaps} snapshots done in {:?}",
        start.elapsed()
    );
}

/// Reads the image in `chunk`-sized pieces with `Handle::block_on` and
/// writes them to `path`, as the early CLI export did; the bytes written.
fn export_blocking(
    handle: &tokio::runtime::Handle,
    img: &Image,
    chunk: u64,
    path: &std::path::Path,
) -> Vec<u8> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("export file");
    let mut off = 0;
    while off < img.size() {
        let len = chunk.min(img.size() - off);
        let data = handle.block_on(img.read(off, len)).expect("read");
        f.write_all(&data).expect("write export file");
        off += len;
    }
    drop(f);
    std::fs::read(path).expect("read export file")
}

#[test]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
fn chunked_export_from_a_spawn_blocking_thread() {
    const OBJ4M: u64 = 4 << 20;
    const SIZE: u64 = 32 << 20;
    let rt = cli_runtime();
    let (store, img) = rt.block_on(create_open(&unique("export"), SIZE, OBJ4M));
    let mut want = Vec::with_capacity(SIZE as usize);
    rt.block_on(async {
        for i in 0..SIZE / OBJ4M {
            let data = pattern(i, OBJ4M as usize);
            img.write(i * OBJ4M, data.clone()).await.expect("write");
            want.extend_from_slice(&data);
        }
        img.snap_create("s").await.expect("snap");
        // The head moves on; the snapshot keeps the first contents.
        img.write(0, pattern(99, 4096)).await.expect("write");
    });
    let snap = rt
        .block_on(store.open_snapshot("img", "s"))
        .expect("open snapshot");
    let dir = tempfile::tempdir().expect("tempdir");
    for (what, image) in [("head", img.clone()), ("snapshot", snap)] {
        let path = dir.path().join(what);
        let handle = rt.handle().clone();
        let got = bounded(&format!("export of the {what}"), {
            let handle2 = handle.clone();
            move || {
                handle2.block_on(async move {
                    tokio::task::spawn_blocking(move || {
                        export_blocking(&handle, &image, 1 << 20, &path)
                    })
                    .await
                    .expect("join")
                })
            }
        });
        let mut expected = want.clone();
        if what == "head" {
            expected[..4096].copy_from_slice(&pattern(99, 4096));
        }
        assert!(got == expected, "the export of the {what} differs");
    }
    rt.block_on(img.close()).expect("close");
}

#[test]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
fn whole_image_reads_beyond_the_objecter_budget() {
    // 16 blocking threads each read a 64 MiB image whole, three times: 1
    // GiB asked of librados at once, ten times objecter_inflight_op_bytes,
    // so submissions block in librados' throttle inside futures polled by
    // block_on until earlier reads complete.
    const OBJ4M: u64 = 4 << 20;
    const SIZE: u64 = 64 << 20;
    const READERS: usize = 16;
    let rt = cli_runtime();
    let (_store, img) = rt.block_on(create_open(&unique("budget"), SIZE, OBJ4M));
    rt.block_on(async {
        for i in 0..SIZE / OBJ4M {
            img.write(i * OBJ4M, pattern(i, OBJ4M as usize))
                .await
                .expect("write");
        }
    });
    let handle = rt.handle().clone();
    let image = img.clone();
    let bytes = bounded("whole-image readers", move || {
        let h = handle.clone();
        handle.block_on(async move {
            let mut tasks = Vec::new();
            for _ in 0..READERS {
                let (h, img) = (h.clone(), image.clone());
                tasks.push(tokio::task::spawn_blocking(move || {
                    (0..3)
                        .map(|_| h.block_on(img.read(0, SIZE)).expect("read").len() as u64)
                        .sum::<u64>()
                }));
            }
            let mut sum = 0;
            for t in tasks {
                sum += t.await.expect("join");
            }
            sum
        })
    });
    assert_eq!(bytes, READERS as u64 * 3 * SIZE);
    let first = rt.block_on(img.read(0, 4096)).expect("read");
    assert_eq!(first, pattern(0, OBJ4M as usize).slice(..4096));
    rt.block_on(img.close()).expect("close");
}

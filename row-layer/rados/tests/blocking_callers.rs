//! Synchronous callers on RADOS: many threads that are not runtime workers
//! (plain `std::thread`s and `spawn_blocking` threads) drive image reads
//! and writes with `Handle::block_on`, all at once (issue 10, defect 7; the
//! "read driven by Handle::block_on never completed" of DESIGN.md §9).
//!
//! Needs `CEPH_CONF` (see rados_conformance.rs); fails loudly without it.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{pattern, OBJ};
use row_layer::backend::Backend;
use row_layer::{CreateOptions, Image, Store};
use row_rados::{ClusterConfig, RadosCluster};
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

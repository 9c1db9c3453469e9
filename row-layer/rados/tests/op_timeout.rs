//! A RADOS operation whose completion never fires returns a `Transient`
//! timeout error instead of hanging its future (issue 10, defect 7).
//!
//! The OSD is SIGSTOPped (it neither answers nor is marked down within the
//! test's time), so librados' own op timeout is switched off
//! (`rados_osd_op_timeout` = 0) and only the backend's op timeout can end
//! the wait. The OSD is resumed before the test ends, also on failure.
//!
//! Needs a cluster of `tests/ceph/cluster.sh` (`CEPH_CONF` and
//! `RBD_ROW_CEPH_DIR`, for the OSD's pid file); fails loudly without it.
//! It stops the cluster's OSDs for a few seconds: do not run it against a
//! cluster other tests use at the same time.

use bytes::Bytes;
use row_layer::backend::{Backend, WriteOp};
use row_layer::ErrorKind;
use row_rados::{ClusterConfig, RadosBackend, RadosCluster};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const OP_TIMEOUT: Duration = Duration::from_secs(2);

async fn connect(options: Vec<(String, String)>) -> RadosCluster {
    let conf = std::env::var("CEPH_CONF").unwrap_or_else(|_| {
        panic!(
            "CEPH_CONF is not set: start the test cluster with \
             `tests/ceph/cluster.sh start && eval \"$(tests/ceph/cluster.sh env)\"`"
        )
    });
    let mut opts = vec![("client_mount_timeout".to_string(), "15".to_string())];
    opts.extend(options);
    let config = ClusterConfig {
        conf_path: Some(conf.clone().into()),
        client_name: Some("client.admin".into()),
        options: opts,
        ..ClusterConfig::default()
    };
    RadosCluster::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to CEPH_CONF={conf}: {e}"))
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("row-optimeout-{tag}-{}-{nanos}", std::process::id())
}

/// The pids of the cluster's OSD daemons (only daemons started with this
/// CEPH_CONF, as cluster.sh checks).
fn osd_pids() -> Vec<u32> {
    let dir = PathBuf::from(std::env::var("RBD_ROW_CEPH_DIR").unwrap_or_else(|_| {
        panic!("RBD_ROW_CEPH_DIR is not set: eval \"$(tests/ceph/cluster.sh env)\"")
    }));
    let conf = std::env::var("CEPH_CONF").expect("CEPH_CONF");
    let mut pids = Vec::new();
    for i in 0..9 {
        let Ok(pid) = std::fs::read_to_string(dir.join(format!("run/osd.{i}.pid"))) else {
            continue;
        };
        let Ok(pid) = pid.trim().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&conf) {
            pids.push(pid);
        }
    }
    assert!(
        !pids.is_empty(),
        "no OSD of {conf} found in {}",
        dir.display()
    );
    pids
}

fn signal(pids: &[u32], sig: &str) {
    for pid in pids {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid}");
    }
}

/// Whether every thread of process `pid` is stopped (state `T`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // "tid (comm) S ...": the state follows the last ')'.
        stat.rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('T'))
            .unwrap_or(false)
    })
}

/// Resumes the OSDs when dropped, so that a failing test leaves them running.
struct Stopped(Vec<u32>);

impl Stopped {
    fn new() -> Stopped {
        let pids = osd_pids();
        signal(&pids, "-STOP");
        let stopped = Stopped(pids);
        // kill returns before every thread has stopped: wait until each
        // thread of each OSD is in state T.
        let t0 = Instant::now();
        while !stopped.0.iter().all(|p| all_threads_stopped(*p)) {
            assert!(t0.elapsed() < Duration::from_secs(10), "OSD did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF and RBD_ROW_CEPH_DIR (a cluster of tests/ceph/cluster.sh)"]
async fn an_op_that_never_completes_times_out_as_transient() {
    // librados itself never gives up (rados_osd_op_timeout = 0).
    let cluster = connect(vec![("rados_osd_op_timeout".into(), "0".into())]).await;
    let be: RadosBackend = cluster
        .open_pool("rbd", &unique("stuck"))
        .await
        .expect("open pool")
        .with_op_timeout(Some(OP_TIMEOUT));
    be.operate(
        "obj",
        WriteOp::new().write_full(Bytes::from_static(b"before")),
    )
    .await
    .expect("write while the OSD runs");
    {
        let _stopped = Stopped::new();
        let t0 = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(20), be.read("obj", 0, 6)).await;
        let err = read
            .expect("a read from a stopped OSD must not hang (op timeout)")
            .expect_err("no OSD answers");
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
        assert!(
            t0.elapsed() >= OP_TIMEOUT && t0.elapsed() < OP_TIMEOUT * 4,
            "timed out after {:?}",
            t0.elapsed()
        );
        let write = tokio::time::timeout(
            Duration::from_secs(20),
            be.operate(
                "obj",
                WriteOp::new().write_full(Bytes::from_static(b"stuck!")),
            ),
        )
        .await;
        let err = write
            .expect("a write to a stopped OSD must not hang (op timeout)")
            .expect_err("no OSD answers");
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
        let stat = tokio::time::timeout(Duration::from_secs(20), be.stat("obj")).await;
        assert_eq!(
            stat.expect("stat must not hang").err().map(|e| e.kind()),
            Some(ErrorKind::Transient)
        );
    }
    // The OSD is back: the abandoned write may have landed or not, and the
    // backend works again.
    let got = tokio::time::timeout(Duration::from_secs(60), be.read("obj", 0, 6))
        .await
        .expect("read after the OSD resumed")
        .expect("read");
    assert!(got == b"before"[..] || got == b"stuck!"[..], "{got:?}");
    be.operate("obj", WriteOp::remove()).await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CEPH_CONF (a running cluster: tests/ceph/cluster.sh start)"]
async fn a_default_connection_bounds_every_op() {
    // Without an explicit setting, librados gets a finite op timeout and the
    // backend a slightly longer one of its own.
    let cluster = connect(Vec::new()).await;
    let librados: u64 = cluster
        .conf_get("rados_osd_op_timeout")
        .expect("conf_get")
        .parse()
        .expect("a number of seconds");
    assert!(librados > 0, "rados_osd_op_timeout stays 0 (wait forever)");
    let be = cluster
        .open_pool("rbd", &unique("default"))
        .await
        .expect("open pool");
    let t = be
        .op_timeout()
        .expect("the backend bounds its ops by default");
    assert!(t > Duration::from_secs(librados), "{t:?} vs {librados} s");
    // An explicit setting is kept, 0 included.
    let cluster = connect(vec![("rados_osd_op_timeout".into(), "0".into())]).await;
    assert_eq!(
        cluster.conf_get("rados_osd_op_timeout").expect("conf_get"),
        "0"
    );
}

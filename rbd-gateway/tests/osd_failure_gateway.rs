//! An OSD stopped while fio writes (with verification) through the real
//! `rbd-gateway` over NBD, on a 3-OSD cluster of tests/ceph/cluster.sh
//! (pool `rbd`: size 3, min_size 2). The pool stays writable with one OSD
//! down, so no error may reach the client: fio exits 0 with `err= 0` and
//! every block it verified matches. The OSD is started again before the
//! test ends.
//!
//! Needs the 3-OSD cluster (tests/run-all.sh runs this file in its 3-OSD
//! stage):
//! `RBD_ROW_CEPH_DIR=/tmp/rbd-row-ceph-3osd RBD_ROW_CEPH_OSDS=3 tests/ceph/cluster.sh start
//! && eval "$(RBD_ROW_CEPH_DIR=/tmp/rbd-row-ceph-3osd tests/ceph/cluster.sh env)"`,
//! then `cargo test -p rbd-gateway --test osd_failure_gateway -- --ignored`.
//! The test refuses to run on a cluster with fewer than 3 OSDs.

mod common;

use common::gateway_proc::GatewayProc;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn cli_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_rbd-gateway")).with_file_name("rbd-row");
    assert!(
        p.is_file(),
        "the rbd-row CLI binary is missing at {}: build it first with \
         `cargo build -p rbd-row-cli` (same profile and target dir)",
        p.display()
    );
    p
}

fn show(cmd: &str, out: &Output) -> String {
    format!(
        "{cmd} ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn row(conf: &str, args: &[&str]) -> Output {
    Command::new(cli_bin())
        .args(["-c", conf])
        .args(args)
        .arg("--no-progress")
        .env_remove("RBD_ROW_STORE")
        .output()
        .expect("run rbd-row")
}

fn row_ok(conf: &str, args: &[&str]) -> Output {
    let out = row(conf, args);
    assert!(
        out.status.success(),
        "{}",
        show(&format!("rbd-row {args:?}"), &out)
    );
    out
}

/// The cluster.sh directory of `CEPH_CONF`, checked to be a throwaway
/// cluster with at least 3 OSDs.
fn three_osd_cluster() -> (String, PathBuf) {
    let conf = std::env::var("CEPH_CONF").unwrap_or_default();
    assert!(
        !conf.is_empty() && Path::new(&conf).exists(),
        "CEPH_CONF is not set: this test needs a 3-OSD cluster (RBD_ROW_CEPH_OSDS=3 \
         tests/ceph/cluster.sh start; run by tests/run-all.sh)"
    );
    let dir = Path::new(&conf).parent().expect("conf dir").to_path_buf();
    assert!(
        dir.join(".rbd-row-ceph-cluster").exists(),
        "CEPH_CONF={conf} is not a cluster of tests/ceph/cluster.sh; this test stops its OSDs"
    );
    let osds: u32 = std::fs::read_to_string(dir.join("osds"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        osds >= 3,
        "the cluster of CEPH_CONF={conf} has {osds} OSD(s); this test needs 3 \
         (RBD_ROW_CEPH_OSDS=3 tests/ceph/cluster.sh start)"
    );
    (conf, dir)
}

fn cluster_sh(dir: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ceph/cluster.sh");
    let t = Instant::now();
    let out = Command::new(&script)
        .args(args)
        .env("RBD_ROW_CEPH_DIR", dir)
        .env_remove("RBD_ROW_CEPH_OSDS")
        .output()
        .expect("run cluster.sh");
    assert!(
        out.status.success(),
        "{}",
        show(&format!("cluster.sh {args:?}"), &out)
    );
    eprintln!(
        "osd_failure_gateway: cluster.sh {args:?}: {:?}",
        t.elapsed()
    );
}

/// Starts the OSD again however the test ends.
struct OsdGuard<'a> {
    dir: &'a Path,
    id: &'a str,
}

impl Drop for OsdGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ceph/cluster.sh");
            let _ = Command::new(script)
                .args(["osd-start", self.id])
                .env("RBD_ROW_CEPH_DIR", self.dir)
                .env_remove("RBD_ROW_CEPH_OSDS")
                .output();
        }
    }
}

#[test]
#[ignore = "needs CEPH_CONF of a 3-OSD cluster (RBD_ROW_CEPH_OSDS=3), run by tests/run-all.sh"]
fn osd_failure_gateway_fio_verify_survives_one_osd_down() {
    let (conf, cdir) = three_osd_cluster();
    cluster_sh(&cdir, &["wait"]);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let image = format!("rbd/osdgw{}x{nanos:x}/img", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    row_ok(&conf, &["create", &image, "--size", "64M"]);
    let gw = GatewayProc::on_ceph(&conf, &image, dir.path());
    let url = format!("nbd://127.0.0.1:{}/{image}", gw.port);

    let started = Instant::now();
    let fio = Command::new("fio")
        .args([
            "--name=osdfail",
            "--ioengine=nbd",
            &format!("--uri={url}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=16M",
            "--time_based",
            "--runtime=40",
            "--verify=crc32c",
            "--verify_backlog=64",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fio");
    std::thread::sleep(Duration::from_secs(5));
    let guard = OsdGuard {
        dir: &cdir,
        id: "1",
    };
    cluster_sh(&cdir, &["osd-stop", "1"]);
    std::thread::sleep(Duration::from_secs(10));
    cluster_sh(&cdir, &["osd-start", "1"]);
    drop(guard);
    let out = fio.wait_with_output().expect("fio");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "osd_failure_gateway: fio ran {:?} with osd.1 down for 10 s of it",
        started.elapsed()
    );
    assert!(
        out.status.success() && text.contains("err= 0"),
        "fio through the gateway saw an error while one OSD was down ({}):\n{text}\n\
         gateway log:\n{}",
        out.status,
        gw.log()
    );
    drop(gw);
    cluster_sh(&cdir, &["wait"]);
    let _ = row(&conf, &["rm", &image]);
}

//! fio's rbd engine, unmodified, through this library
//! (`LD_LIBRARY_PATH=<dir of librbd.so.1>`): random 4 KiB reads and writes
//! at iodepth 32 with crc32c verification, on a ROW image and on a native
//! image (forwarded to the system librbd). fio uses the engine's polling
//! mode (eventfd + rbd_poll_io_events) when built with it, as Debian's is.

mod common;

use std::path::Path;
use std::process::Command;

fn fio(lib: &Path, image: &str) -> String {
    common::run_ok(
        Command::new("fio")
            .args([
                "--name=librbd-dropin",
                "--ioengine=rbd",
                "--clientname=admin",
                "--pool=rbd",
                &format!("--rbdname={image}"),
                "--rw=randrw",
                "--bs=4k",
                "--iodepth=32",
                "--size=24M",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                // No verify-state file in the working directory (the crate's
                // source tree).
                "--verify_state_save=0",
            ])
            .env("CEPH_CONF", common::ceph_conf())
            .env("LD_LIBRARY_PATH", lib),
    )
}

#[test]
#[ignore = "needs CEPH_CONF (run by tests/run-all.sh)"]
fn fio_rbd_engine_with_verify_on_row_and_native_images() {
    common::ceph_conf();
    let lib = common::lib_dir();
    // fio resolves librbd.so.1 to this library.
    let ldd = common::run_ok(
        Command::new("ldd")
            .arg("/usr/bin/fio")
            .env("LD_LIBRARY_PATH", lib.path()),
    );
    let line = ldd
        .lines()
        .find(|l| l.contains("librbd.so.1"))
        .expect("fio links librbd.so.1");
    assert!(line.contains(&*lib.path().to_string_lossy()), "{line}");

    let work = tempfile::tempdir().expect("tempdir");
    let rbdtool = common::compile("rbdtool", work.path());
    let row = common::unique("fiorow");
    common::run_ok(
        Command::new(&rbdtool)
            .args(["create", "rbd", &row, "64"])
            .env("CEPH_CONF", common::ceph_conf())
            .env("LD_LIBRARY_PATH", lib.path())
            .env("RBD_ROW_CREATE", "1"),
    );
    let native = common::unique("fionat");
    common::rbd_create_native(&native, "64M");
    // The ROW image is not a native one (the real rbd tool cannot see it).
    let o = Command::new("rbd")
        .args(["info", &format!("rbd/{row}")])
        .output()
        .expect("rbd");
    assert!(!o.status.success(), "rbd info found the ROW image {row}");

    for image in [&row, &native] {
        let out = fio(lib.path(), image);
        assert!(out.contains("err= 0"), "{image}:\n{out}");
        assert!(
            out.contains("read: IOPS="),
            "{image}: no verify reads:\n{out}"
        );
    }
    common::run_ok(
        Command::new(&rbdtool)
            .args(["remove", "rbd", &row])
            .env("CEPH_CONF", common::ceph_conf())
            .env("LD_LIBRARY_PATH", lib.path()),
    );
    common::rbd_remove_native(&native);
}

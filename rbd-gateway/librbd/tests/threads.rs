//! Synchronous librbd calls (rbd_read, rbd_write, rbd_flush, aio waited
//! for, snapshot create/remove) from 17 foreign threads at once, on a ROW
//! image through this library (tests/c/threads.c): every call returns
//! what librbd promises, every read matches, and nothing hangs (the
//! program's alarm fails it). The same program on a native image through
//! this library checks the pass-through under the same load.

mod common;

use std::process::Command;

fn tool(prog: &std::path::Path, lib: &std::path::Path, row: bool, args: &[&str]) -> String {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env("CEPH_CONF", common::ceph_conf())
        .env("LD_LIBRARY_PATH", lib)
        .env_remove("RBD_ROW_CREATE");
    if row {
        cmd.env("RBD_ROW_CREATE", "1");
    }
    common::run_ok(&mut cmd)
}

#[test]
#[ignore = "needs CEPH_CONF (run by tests/run-all.sh)"]
fn foreign_threads_drive_synchronous_calls() {
    common::ceph_conf();
    let lib = common::lib_dir();
    let work = tempfile::tempdir().expect("tempdir");
    let rbdtool = common::compile("rbdtool", work.path());
    let threads = common::compile("threads", work.path());
    for (row, tag) in [(true, "throw"), (false, "thrnat")] {
        let image = common::unique(tag);
        tool(&rbdtool, lib.path(), row, &["create", "rbd", &image, "16"]);
        let out = tool(&threads, lib.path(), false, &["rbd", &image]);
        assert!(out.starts_with("ok "), "{tag}: {out}");
        tool(&rbdtool, lib.path(), false, &["remove", "rbd", &image]);
        let listed = tool(&rbdtool, lib.path(), false, &["list", "rbd"]);
        assert!(!listed.lines().any(|l| l == image), "{image} still listed");
    }
}

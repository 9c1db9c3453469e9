//! Shared by the librbd drop-in's tests: the built library as a
//! `librbd.so.1` in a directory for `LD_LIBRARY_PATH`, compiling the C
//! clients against the real header, and the test cluster's settings.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// The built `librbd.so`: the cdylib cargo built with this test's lib, in
/// `target/<profile>/deps`. Not the copy in `target/<profile>`: cargo
/// copies it there only for `cargo build`, never for `cargo test`, so that
/// one is whatever the last build made, not the code under test.
pub fn built_so() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target/<profile>/deps");
    let so = dir.join("librbd.so");
    assert!(so.exists(), "{} is not built", so.display());
    so
}

/// A temporary directory holding `librbd.so.1` (a link to the built
/// library), for `LD_LIBRARY_PATH`.
pub fn lib_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(built_so(), d.path().join("librbd.so.1")).expect("symlink");
    d
}

/// Compiles `tests/c/<name>.c` against the installed `rbd/librbd.h` into
/// `dir/<name>`, linked with `-lrbd -lrados -lpthread` (which librbd.so.1
/// it loads is decided at run time).
pub fn compile(name: &str, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    let o = Command::new("cc")
        .args([
            "-Wall",
            "-Werror",
            "-Wno-deprecated-declarations",
            "-O1",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .args(["-lrbd", "-lrados", "-lpthread"])
        .output()
        .expect("run cc (apt-get install gcc librbd-dev)");
    assert!(
        o.status.success(),
        "cc {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// `$CEPH_CONF`, or a panic saying how to start the test cluster.
pub fn ceph_conf() -> String {
    std::env::var("CEPH_CONF").unwrap_or_else(|_| {
        panic!(
            "CEPH_CONF is not set: start the test cluster with \
             `tests/ceph/cluster.sh start && eval \"$(tests/ceph/cluster.sh env)\"`"
        )
    })
}

/// A name no other test run uses.
pub fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "librbd-{tag}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000
    )
}

/// Runs `cmd`, asserting success; its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Creates a native image with the real `rbd` tool.
pub fn rbd_create_native(image: &str, size: &str) {
    run_ok(Command::new("rbd").args(["create", "--size", size, &format!("rbd/{image}")]));
}

/// Removes a native image (ignoring errors: cleanup).
pub fn rbd_remove_native(image: &str) {
    let _ = Command::new("rbd")
        .args(["rm", "--no-progress", &format!("rbd/{image}")])
        .output();
}

//! Helpers shared by the integration tests: running the `rbd-row` binary
//! (and the real `rbd`), and a history of image operations.
#![allow(dead_code, unreachable_pub)]

use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The `rbd-row` binary with a clean environment (no Ceph or store
/// variables leak in from the caller).
pub fn rbd_row() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbd-row"));
    for v in ["CEPH_CONF", "CEPH_ARGS", "RBD_ROW_STORE", "XDG_DATA_HOME"] {
        c.env_remove(v);
    }
    c.arg("--no-progress");
    c.stdin(Stdio::null());
    c
}

/// `rbd-row --store DIR ...`.
pub fn local(store: &Path) -> Command {
    let mut c = rbd_row();
    c.arg("--store").arg(store);
    c
}

/// Runs `c` with `args`, returns its output (no status check).
pub fn run(mut c: Command, args: &[&str]) -> Output {
    c.args(args);
    c.output().expect("spawning command")
}

/// Runs and asserts success; returns stdout.
pub fn ok(c: Command, args: &[&str]) -> Vec<u8> {
    let o = run(c, args);
    assert!(
        o.status.success(),
        "command {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Like [`ok`] but as a string.
pub fn ok_str(c: Command, args: &[&str]) -> String {
    String::from_utf8(ok(c, args)).expect("utf-8 output")
}

/// Runs, asserts failure with exit code `code`; returns stderr.
pub fn fails(c: Command, args: &[&str], code: i32) -> String {
    let o = run(c, args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(code),
        "command {args:?}: expected exit {code}\nstdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&o.stdout)
    );
    err
}

/// One step of an image's history.
#[derive(Debug, Clone)]
pub enum Op {
    Write(u64, Vec<u8>),
    Discard(u64, u64),
    Zero(u64, u64),
    Resize(u64),
    Snap(&'static str),
    Protect(&'static str),
}

/// A multi-snapshot history: unaligned writes, discards, zeroes, data that
/// is all zeros, a grow and a shrink, a protected snapshot, and head changes.
pub fn history() -> Vec<Op> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed);
    let mut data = |n: usize| -> Vec<u8> { (0..n).map(|_| rng.gen()).collect() };
    const M: u64 = 1 << 20;
    vec![
        Op::Write(1000, data(5000)),
        Op::Write(3 * M + 17, data(300 << 10)),
        Op::Write(7 * M, data((M - 5) as usize)),
        Op::Write(5 * M, data(2 * M as usize)),
        Op::Snap("s1"),
        Op::Discard(40960, 65536),
        Op::Zero(3 * M + 4096, 8192),
        Op::Write(6000, data(123)),
        Op::Write(2 * M, vec![0; 8192]),
        Op::Discard(5 * M, M),
        Op::Snap("s2"),
        Op::Resize(12 * M),
        Op::Write(10 * M + 7, data(100 << 10)),
        Op::Snap("s3"),
        Op::Protect("s3"),
        Op::Resize(5 * M),
        Op::Write(4 * M + 1, data(4000)),
        Op::Snap("s4"),
        Op::Write(0, data(4096)),
        Op::Discard(M, M),
        Op::Resize(6 * M + 512),
        Op::Write(6 * M - 100, data(600)),
    ]
}

/// Initial size of the history's image.
pub const HISTORY_SIZE: u64 = 8 << 20;

/// Snapshot names of [`history`], in order.
pub fn history_snaps() -> Vec<&'static str> {
    history()
        .iter()
        .filter_map(|o| match o {
            Op::Snap(s) => Some(*s),
            _ => None,
        })
        .collect()
}

/// Applies the history to a row-layer image (through the library).
pub async fn apply_row(img: &row_layer::Image, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Write(o, d) => img
                .write(*o, bytes::Bytes::from(d.clone()))
                .await
                .expect("write"),
            Op::Discard(o, l) => img.discard(*o, *l).await.expect("discard"),
            Op::Zero(o, l) => img.write_zeroes(*o, *l).await.expect("write_zeroes"),
            Op::Resize(s) => img.resize(*s).await.expect("resize"),
            Op::Snap(s) => {
                img.flush().await.expect("flush");
                img.snap_create(s).await.expect("snap_create");
            }
            Op::Protect(s) => img.snap_set_protected(s, true).await.expect("protect"),
        }
    }
    img.flush().await.expect("flush");
}

/// A temporary embedded store and the `rbd-row` commands run against it.
pub struct T {
    pub dir: tempfile::TempDir,
}

impl T {
    pub fn new() -> Self {
        T {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }
    pub fn file(&self, n: &str) -> std::path::PathBuf {
        self.dir.path().join(n)
    }
    pub fn ok(&self, args: &[&str]) -> Vec<u8> {
        ok(local(&self.store()), args)
    }
    pub fn ok_str(&self, args: &[&str]) -> String {
        ok_str(local(&self.store()), args)
    }
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok_str(args)).expect("json output")
    }
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        fails(local(&self.store()), args, code)
    }
}

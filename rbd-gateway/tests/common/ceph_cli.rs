//! `rbd-row` against the Ceph test cluster, for the real-process tests
//! (kill -9 of the gateway, pool quota): the CLI binary next to the
//! gateway's, `CEPH_CONF`, and commands run with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn cli_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_rbd-gateway")).with_file_name("rbd-row");
    assert!(
        p.is_file(),
        "the rbd-row CLI binary is missing at {}: build it first with \
         `cargo build -p rbd-row-cli` (same profile and target dir)",
        p.display()
    );
    p
}

pub fn ceph_conf() -> String {
    let c = std::env::var("CEPH_CONF").unwrap_or_default();
    assert!(
        !c.is_empty() && Path::new(&c).exists(),
        "CEPH_CONF is not set or does not exist ({c:?}): this test needs the Ceph test cluster \
         (tests/ceph/cluster.sh start; eval \"$(tests/ceph/cluster.sh env)\"; run by tests/run-all.sh)"
    );
    c
}

pub fn show(cmd: &str, out: &Output) -> String {
    format!(
        "{cmd} ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn row_cmd(conf: &str, args: &[&str]) -> Command {
    let mut c = Command::new(cli_bin());
    c.args(["-c", conf])
        .args(args)
        .arg("--no-progress")
        .env_remove("RBD_ROW_STORE");
    c
}

pub fn row(conf: &str, args: &[&str]) -> Output {
    row_cmd(conf, args).output().expect("run rbd-row")
}

pub fn row_ok(conf: &str, args: &[&str]) -> Output {
    let out = row(conf, args);
    assert!(
        out.status.success(),
        "{}",
        show(&format!("rbd-row {args:?}"), &out)
    );
    out
}

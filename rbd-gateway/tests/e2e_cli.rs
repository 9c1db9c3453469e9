//! End to end with the real binaries: `rbd-gateway` serving an image while
//! the `rbd-row` CLI works on it (snapshots forwarded to the gateway, which
//! owns the image, through the multi-process local store or RADOS
//! watch/notify), checked with qemu-io / qemu-img / nbdinfo.
//!
//! The CLI is another package: its binary is expected next to
//! `rbd-gateway` (`target/<profile>/rbd-row`). `cargo test --workspace`
//! builds it (rbd-row-cli has integration tests, so its binary is built
//! before any test runs); with `cargo test -p rbd-gateway` build it first
//! with `cargo build -p rbd-row-cli`.
//!
//! The RADOS test needs the test cluster:
//! `tests/ceph/cluster.sh start; eval "$(tests/ceph/cluster.sh env)"`, then
//! `cargo test -p rbd-gateway --test e2e_cli -- --ignored` (tests/run-all.sh
//! does this).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::gateway_proc::GatewayProc;
use common::{nbd_map, MIB};

const SIZE: u64 = 64 * MIB;

/// The `rbd-row` binary next to `rbd-gateway`.
fn cli_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_rbd-gateway")).with_file_name("rbd-row");
    assert!(
        p.is_file(),
        "the rbd-row CLI binary is missing at {}: build it first with \
         `cargo build -p rbd-row-cli` (same profile and CARGO_TARGET_DIR as this test; \
         `cargo test --workspace` builds it)",
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

/// Runs `rbd-row <store_args> <args>` (no progress output).
fn row(store_args: &[String], args: &[&str]) -> Output {
    Command::new(cli_bin())
        .args(store_args)
        .args(args)
        .arg("--no-progress")
        .env_remove("RBD_ROW_STORE")
        .output()
        .expect("run rbd-row")
}

/// [`row`], asserting success.
fn row_ok(store_args: &[String], args: &[&str]) -> Output {
    let out = row(store_args, args);
    assert!(
        out.status.success(),
        "{}",
        show(&format!("rbd-row {store_args:?} {args:?}"), &out)
    );
    out
}

fn tool_ok(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        show(&format!("{program} {args:?}"), &out)
    );
    out
}

fn qemu_io(url: &str, cmd: &str) {
    let out = tool_ok("qemu-io", &["-f", "raw", "-c", cmd, url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("error") && !text.contains("Pattern verification failed"),
        "qemu-io {cmd:?}: {text}"
    );
}

/// `rbd-gateway <store_args> <args>`.
fn start_gateway(store_args: &[String], args: &[&str], log_dir: &Path) -> GatewayProc {
    let mut all: Vec<&str> = store_args.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    GatewayProc::spawn(&all, log_dir)
}

/// SIGTERM; asserts a clean exit (0) that closed the image.
fn stop_cleanly(mut gw: GatewayProc) {
    let status = gw.terminate_within(Duration::from_secs(30));
    let log = gw.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}:\n{log}"
    );
    assert!(log.contains("image closed"), "{log}");
}

/// The image contents expected at s1: 0x11 over [0, 1M), zeros elsewhere.
fn s1_contents() -> Vec<u8> {
    let mut v = vec![0u8; SIZE as usize];
    v[..MIB as usize].fill(0x11);
    v
}

fn parse_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn snap_names(store_args: &[String], image: &str) -> Vec<String> {
    let out = row_ok(store_args, &["snap", "ls", image, "--format", "json"]);
    parse_json(&out)
        .as_array()
        .unwrap_or_else(|| panic!("snap ls JSON is not an array"))
        .iter()
        .filter_map(|s| s.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect()
}

/// First write, `snap create` through the serving gateway, second write;
/// checks `snap ls` and `export` of the snapshot; the gateway keeps
/// serving.
fn core_flow(store_args: &[String], image: &str, gw: &GatewayProc, work: &Path) {
    let url = gw.url(image);
    qemu_io(&url, "write -P 0x11 0 1M");
    // Forwarded to the gateway (the image's owner).
    row_ok(store_args, &["snap", "create", &format!("{image}@s1")]);
    qemu_io(&url, "write -P 0x22 4M 256k");
    qemu_io(&url, "read -P 0x11 0 1M");
    qemu_io(&url, "read -P 0x22 4M 256k");
    assert_eq!(snap_names(store_args, image), vec!["s1".to_owned()]);
    // The gateway's own head handle knows s1 (it took it) and maps the
    // second write as the change since.
    let map = nbd_map(&url, Some("rbd-row:diff:s1"));
    let end = 4 * MIB + 256 * 1024;
    assert_eq!(
        map,
        vec![
            (0, 4 * MIB, 0),
            (4 * MIB, 256 * 1024, 1),
            (end, SIZE - end, 0)
        ]
    );

    let file = work.join("s1.raw");
    let file_s = file.to_str().expect("utf8 path");
    row_ok(store_args, &["export", &format!("{image}@s1"), file_s]);
    let got = std::fs::read(&file).expect("read export");
    assert!(
        got == s1_contents(),
        "export of {image}@s1 differs from what was written before s1 ({} bytes)",
        got.len()
    );
}

/// `snap rollback SPEC` without `--force` on a served image: nonzero exit
/// and a message naming the reason and the way out.
fn rollback_refused(store_args: &[String], spec: &str) {
    let out = row(store_args, &["snap", "rollback", spec]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", show("rollback", &out));
    assert!(
        err.contains("in use") && err.contains("--force"),
        "{}",
        show("rollback", &out)
    );
}

#[test]
fn local_store_gateway_and_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let store_args = vec![
        "--store".to_owned(),
        store.to_str().expect("utf8").to_owned(),
    ];
    // Created by the CLI (pool rbd: DIR/rbd), served by the gateway.
    row_ok(&store_args, &["create", "img", "--size", "64M"]);
    assert!(store.join("rbd").is_dir(), "pool rbd is not DIR/rbd");
    let gw = start_gateway(&store_args, &["--export", "img"], dir.path());
    let url = gw.url("img");

    core_flow(&store_args, "img", &gw, dir.path());

    // diff since s1: exactly the second write, from the CLI and over NBD.
    // The CLI reads the served head without taking ownership (as rbd does).
    let second_write = serde_json::json!([
        {"offset": 4 * MIB, "length": 256 * 1024, "exists": "true"}
    ]);
    let out = row_ok(
        &store_args,
        &["diff", "--from-snap", "s1", "img", "--format", "json"],
    );
    assert_eq!(
        parse_json(&out),
        second_write,
        "{}",
        show("rbd-row diff of the served head", &out)
    );
    // And up to a snapshot s2 taken (forwarded to the gateway) after it.
    row_ok(&store_args, &["snap", "create", "img@s2"]);
    let out = row_ok(
        &store_args,
        &["diff", "--from-snap", "s1", "img@s2", "--format", "json"],
    );
    assert_eq!(
        parse_json(&out),
        second_write,
        "{}",
        show("rbd-row diff", &out)
    );
    // Rollback while served: refused without --force.
    rollback_refused(&store_args, "img@s1");
    qemu_io(&url, "read -P 0x22 4M 256k");
    // With --force: the served head now reads as s1.
    row_ok(&store_args, &["snap", "rollback", "img@s1", "--force"]);
    let head = dir.path().join("head.raw");
    tool_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &url,
            head.to_str().expect("utf8"),
        ],
    );
    let got = std::fs::read(&head).expect("read head");
    assert!(
        got == s1_contents(),
        "head after rollback --force differs from s1"
    );
    let export = dir.path().join("s1-again.raw");
    row_ok(
        &store_args,
        &["export", "img@s1", export.to_str().expect("utf8")],
    );
    assert!(std::fs::read(&export).expect("read") == s1_contents());

    stop_cleanly(gw);
    // The image was released: the CLI opens the head itself now. It equals
    // s1 (rolled back) and differs from s2 by the second write.
    assert_eq!(snap_names(&store_args, "img"), vec!["s1", "s2"]);
    let out = row_ok(
        &store_args,
        &["diff", "--from-snap", "s1", "img", "--format", "json"],
    );
    assert_eq!(
        parse_json(&out),
        serde_json::json!([]),
        "{}",
        show("diff", &out)
    );
    let out = row_ok(
        &store_args,
        &["diff", "--from-snap", "s2", "img", "--format", "json"],
    );
    assert_eq!(
        parse_json(&out),
        serde_json::json!([{"offset": 4 * MIB, "length": 256 * 1024, "exists": "false"}]),
        "{}",
        show("diff", &out)
    );
}

/// Export names resolve to pools and namespaces as the CLI's specs do:
/// same-named images in different pools/namespaces are different exports.
#[test]
fn exports_resolve_pools_and_namespaces_like_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let store_args = vec![
        "--store".to_owned(),
        store.to_str().expect("utf8").to_owned(),
    ];
    row_ok(&store_args, &["create", "img", "--size", "1M"]);
    row_ok(&store_args, &["create", "other/img", "--size", "2M"]);
    row_ok(&store_args, &["create", "other/ns1/img", "--size", "3M"]);
    row_ok(&store_args, &["create", "solo", "--size", "4M"]);
    let size = |url: &str| -> u64 {
        let out = tool_ok("nbdinfo", &["--size", url]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("size")
    };

    let gw = start_gateway(&store_args, &["--export-all"], dir.path());
    for (export, mib) in [
        ("img", 1),
        ("rbd/img", 1),
        ("other/img", 2),
        ("other/ns1/img", 3),
        ("solo", 4),
    ] {
        assert_eq!(size(&gw.url(export)), mib * MIB, "export {export}");
    }
    // Writes land in the right image.
    qemu_io(&gw.url("other/ns1/img"), "write -P 0x33 0 64k");
    qemu_io(&gw.url("img"), "read -P 0 0 64k");
    qemu_io(&gw.url("other/img"), "read -P 0 0 64k");
    // --export-all lists the default pool.
    let out = tool_ok(
        "nbdinfo",
        &["--list", "--json", &format!("nbd://127.0.0.1:{}", gw.port)],
    );
    let v = parse_json(&out);
    let mut names: Vec<String> = v["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .filter_map(|e| e["export-name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    assert_eq!(names, vec!["img", "solo"]);
    assert!(nbdinfo_fails(&["--size", &gw.url("nosuchpool/img")]));
    stop_cleanly(gw);
    let f = dir.path().join("ns1.raw");
    row_ok(
        &store_args,
        &["export", "other/ns1/img", f.to_str().expect("utf8")],
    );
    let got = std::fs::read(&f).expect("read");
    assert!(got[..65536].iter().all(|b| *b == 0x33) && got[65536..].iter().all(|b| *b == 0));

    // --pool: unqualified exports live in that pool.
    let gw = start_gateway(
        &store_args,
        &["--pool", "other", "--export", "img", "--export", "rbd/img"],
        dir.path(),
    );
    assert_eq!(size(&gw.url("img")), 2 * MIB);
    assert_eq!(size(&gw.url("rbd/img")), MIB);
    // Not exported: other/ns1/img.
    assert!(nbdinfo_fails(&["--size", &gw.url("other/ns1/img")]));
    stop_cleanly(gw);
}

/// Whether `nbdinfo ARGS` fails (the export is refused).
fn nbdinfo_fails(args: &[&str]) -> bool {
    let out = Command::new("nbdinfo")
        .args(args)
        .output()
        .expect("run nbdinfo");
    !out.status.success()
}

fn ceph_conf() -> String {
    let c = std::env::var("CEPH_CONF").unwrap_or_default();
    assert!(
        !c.is_empty() && Path::new(&c).exists(),
        "CEPH_CONF is not set or does not exist ({c:?}): this test needs the Ceph test cluster \
         (tests/ceph/cluster.sh start; eval \"$(tests/ceph/cluster.sh env)\"; run by tests/run-all.sh)"
    );
    c
}

#[test]
#[ignore = "needs CEPH_CONF (run by tests/run-all.sh)"]
fn rados_gateway_and_cli() {
    let conf = ceph_conf();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let ns = format!("gwe2e{}x{nanos:x}", std::process::id());
    let image = format!("rbd/{ns}/img");
    let store_args = vec!["-c".to_owned(), conf];
    let dir = tempfile::tempdir().expect("tempdir");
    row_ok(&store_args, &["create", &image, "--size", "64M"]);
    let gw = start_gateway(&store_args, &["--export", &image], dir.path());

    core_flow(&store_args, &image, &gw, dir.path());
    rollback_refused(&store_args, &format!("{image}@s1"));
    qemu_io(&gw.url(&image), "read -P 0x22 4M 256k");

    // The real clients against the RADOS-backed export: a disk image in
    // with qemu-img, compared, out again with nbdcopy over 4 connections,
    // then fio's verified random writes.
    let url = gw.url(&image);
    let mut data = vec![0u8; SIZE as usize];
    for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
        if i % 4 != 3 {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = (i * 37 + j * 11) as u8 | 1;
            }
        }
    }
    let src = dir.path().join("disk.raw");
    std::fs::write(&src, &data).expect("write source");
    let src_s = src.to_str().expect("utf8 path");
    tool_ok(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src_s, &url],
    );
    tool_ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", src_s, &url],
    );
    let back = dir.path().join("back.raw");
    let back_s = back.to_str().expect("utf8 path");
    tool_ok("nbdcopy", &["--connections=4", "--threads=4", &url, back_s]);
    assert!(
        std::fs::read(&back).expect("read copy") == data,
        "nbdcopy out of RADOS differs"
    );
    let fio = tool_ok(
        "fio",
        &[
            "--name=rados",
            "--ioengine=nbd",
            &format!("--uri={url}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=16M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ],
    );
    let fio_out = String::from_utf8_lossy(&fio.stdout);
    assert!(
        fio_out.contains("err= 0"),
        "fio reported errors:\n{fio_out}"
    );

    stop_cleanly(gw);
    // Clean up the image (best effort).
    let _ = row(&store_args, &["snap", "purge", &image]);
    let _ = row(&store_args, &["rm", &image]);
}

//! One librbd C program (tests/c/abi_check.c, compiled here with `cc`
//! against the installed `rbd/librbd.h`) run twice on the test cluster:
//! through this library on a ROW image it creates (`RBD_ROW_CREATE=1`),
//! and through the system librbd on a native image. Every check line
//! starting with `=` (return values, error codes, completion semantics,
//! data, diff extents at object and grain granularity) must be equal; the
//! `~` lines are the documented differences, checked for their ROW values.
//! A third run through this library on a native image (pass-through) must
//! give the native run's `=` lines too.

mod common;

use std::process::Command;

fn run(prog: &std::path::Path, image: &str, lib: Option<&std::path::Path>, row: bool) -> String {
    let mut cmd = Command::new(prog);
    cmd.args(["rbd", image])
        .env("CEPH_CONF", common::ceph_conf());
    cmd.env_remove("RBD_ROW_CREATE")
        .env_remove("LD_LIBRARY_PATH");
    if let Some(l) = lib {
        cmd.env("LD_LIBRARY_PATH", l);
    }
    if row {
        cmd.env("RBD_ROW_CREATE", "1");
    }
    common::run_ok(&mut cmd)
}

fn lines(out: &str, mark: char) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with(mark)).collect()
}

fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("~ {key} ")))
        .unwrap_or_else(|| panic!("no {key} line in\n{out}"))
}

#[test]
#[ignore = "needs CEPH_CONF (run by tests/run-all.sh)"]
fn c_program_matches_real_librbd() {
    common::ceph_conf();
    let lib = common::lib_dir();
    let work = tempfile::tempdir().expect("tempdir");
    let prog = common::compile("abi_check", work.path());

    let native = run(&prog, &common::unique("cnat"), None, false);
    let row = run(&prog, &common::unique("crow"), Some(lib.path()), true);
    let passthrough = run(&prog, &common::unique("cpass"), Some(lib.path()), false);

    assert!(
        lines(&native, '=').len() > 150,
        "native run too short:\n{native}"
    );
    assert_eq!(
        lines(&row, '='),
        lines(&native, '='),
        "ROW vs native librbd"
    );
    assert_eq!(
        lines(&passthrough, '='),
        lines(&native, '='),
        "pass-through vs native"
    );

    // The runs really used the intended engines.
    assert!(
        value(&row, "block_name_prefix").starts_with("rbd_row_data."),
        "{row}"
    );
    assert!(value(&native, "block_name_prefix").starts_with("rbd_data."));
    assert!(value(&passthrough, "block_name_prefix").starts_with("rbd_data."));
    // Documented differences (DESIGN.md §11): a second writer is refused,
    // and a zeroed range inside an object with data diffs as exists=0.
    assert_eq!(value(&row, "open.second_writer"), "-16");
    assert_eq!(value(&native, "open.second_writer"), "0");
    assert_eq!(value(&row, "diff.s1 1048576+4096"), "exists=0");
    // Functions forwarded to the system librbd (forward.rs): librbd's
    // answer on a native image, -EOPNOTSUPP on a ROW image.
    for key in [
        "forwarded.get_id",
        "forwarded.metadata_set",
        "forwarded.metadata_get",
        "forwarded.get_stripe_unit",
    ] {
        assert_eq!(value(&passthrough, key), value(&native, key), "{key}");
        assert_eq!(value(&row, key), "-95", "{key}");
    }
    assert_eq!(value(&native, "forwarded.metadata_get"), "1");
    assert_eq!(value(&native, "forwarded.get_stripe_unit"), "4194304");
    assert_eq!(value(&native, "diff.s1 1048576+4096"), "exists=1");
}

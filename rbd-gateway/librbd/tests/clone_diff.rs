//! `rbd_diff_iterate2` on a clone with `include_parent` 0 and 1
//! (tests/c/clone_diff.c): a ROW clone through this library against a
//! native clone through the system librbd; the `=` lines (return values,
//! the objects holding data with and without the parent, whole-object
//! extents of the clone's own data) must be equal. The C API has no ROW
//! clone call (`rbd_clone` is forwarded: native only), so the ROW clone
//! is made with the engine, as `rbd-row clone` would.

mod common;

use row_layer::Store;
use row_rados::{ClusterConfig, RadosCluster};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn prog(p: &Path, args: &[&str], lib: Option<&Path>, row: bool) -> String {
    let mut cmd = Command::new(p);
    cmd.args(args)
        .env("CEPH_CONF", common::ceph_conf())
        .env_remove("RBD_ROW_CREATE")
        .env_remove("LD_LIBRARY_PATH");
    if let Some(l) = lib {
        cmd.env("LD_LIBRARY_PATH", l);
    }
    if row {
        cmd.env("RBD_ROW_CREATE", "1");
    }
    common::run_ok(&mut cmd)
}

/// The clone's `=` lines: prepare, clone with `clone`, check, remove.
fn run(p: &Path, tag: &str, lib: Option<&Path>, row: bool, clone: impl Fn(&str, &str)) -> String {
    let (parent, child) = (
        common::unique(&format!("{tag}p")),
        common::unique(&format!("{tag}c")),
    );
    let mut out = prog(p, &["prepare", "rbd", &parent], lib, row);
    clone(&parent, &child);
    out += &prog(p, &["check", "rbd", &child], lib, row);
    out += &prog(p, &["remove", "rbd", &parent, &child], lib, row);
    out.lines()
        .filter(|l| l.starts_with('='))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn row_clone(parent: &str, child: &str) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cluster = RadosCluster::connect(ClusterConfig {
            conf_path: Some(common::ceph_conf().into()),
            ..ClusterConfig::default()
        })
        .await
        .expect("connect");
        let store = Store::new(Arc::new(cluster.open_pool("rbd", "").await.expect("pool")));
        store
            .clone_image(parent, "s", child)
            .await
            .expect("ROW clone");
    });
}

fn native_clone(parent: &str, child: &str) {
    common::run_ok(Command::new("rbd").args([
        "clone",
        &format!("rbd/{parent}@s"),
        &format!("rbd/{child}"),
    ]));
}

#[test]
#[ignore = "needs CEPH_CONF (run by tests/run-all.sh)"]
fn clone_diff_without_parent_matches_real_librbd() {
    common::ceph_conf();
    let lib = common::lib_dir();
    let work = tempfile::tempdir().expect("tempdir");
    let p = common::compile("clone_diff", work.path());
    let native = run(&p, "dn", None, false, native_clone);
    let row = run(&p, "dr", Some(lib.path()), true, row_clone);
    assert!(
        native.contains("= diff.own.objects 36\n"),
        "the native clone's own objects are 2 and 5:\n{native}"
    );
    assert_eq!(row, native, "ROW clone vs native clone");
}

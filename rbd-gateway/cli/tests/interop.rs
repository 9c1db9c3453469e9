//! Interoperability with the real `rbd` (Ceph 16) on the test cluster:
//! diff streams and format-2 exports must move images between native RBD
//! and rbd-row with identical contents at every snapshot.
//!
//! Needs a cluster: `tests/ceph/cluster.sh start; eval "$(tests/ceph/cluster.sh env)"`
//! then `cargo test -p rbd-row-cli --test interop -- --ignored`. The rbd-row
//! images live on the RADOS backend, pool `rbd`, in a namespace unique to
//! the test run; native images get unique names in pool `rbd`.

mod common;

use common::*;
use rbd_streams::{DiffFormat, DiffWriter};
use row_rados::{ClusterConfig, RadosCluster};
use std::path::{Path, PathBuf};
use std::process::Command;

fn ceph_conf() -> String {
    let c = std::env::var("CEPH_CONF").unwrap_or_default();
    assert!(
        !c.is_empty() && Path::new(&c).exists(),
        "CEPH_CONF is not set or does not exist ({c:?}): these tests need the Ceph test cluster \
         (tests/ceph/cluster.sh start; eval \"$(tests/ceph/cluster.sh env)\"; run by tests/run-all.sh)"
    );
    c
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("cli{}x{nanos:x}", std::process::id())
}

fn rbd() -> Command {
    let mut c = Command::new("rbd");
    c.env("CEPH_CONF", ceph_conf());
    c
}

fn row() -> Command {
    let mut c = rbd_row();
    c.arg("-c").arg(ceph_conf());
    c
}

struct Env {
    ns: String,
    tag: String,
    dir: tempfile::TempDir,
    natives: Vec<String>,
    rows: Vec<String>,
}

impl Env {
    fn new() -> Self {
        let tag = unique();
        Env {
            ns: format!("ns-{tag}"),
            tag,
            dir: tempfile::tempdir().expect("tempdir"),
            natives: Vec::new(),
            rows: Vec::new(),
        }
    }
    fn native(&mut self, n: &str) -> String {
        let name = format!("{}-{n}", self.tag);
        self.natives.push(name.clone());
        name
    }
    fn row(&mut self, n: &str) -> String {
        self.rows.push(n.to_string());
        format!("rbd/{}/{n}", self.ns)
    }
    fn file(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for n in &self.natives {
            for s in history_snaps() {
                let _ = rbd()
                    .args(["snap", "unprotect", &format!("{n}@{s}")])
                    .output();
            }
            let _ = rbd().args(["snap", "purge", n]).output();
            let _ = rbd().args(["rm", "--no-progress", n]).output();
        }
        for n in &self.rows {
            let spec = format!("rbd/{}/{n}", self.ns);
            for s in history_snaps() {
                let _ = row()
                    .args(["snap", "unprotect", &format!("{spec}@{s}")])
                    .output();
            }
            let _ = row().args(["snap", "purge", &spec]).output();
            let _ = row().args(["rm", &spec]).output();
        }
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Applies the history to a native image with real rbd: data and zeroes
/// through `rbd import-diff` of single-record v1 streams, resizes and
/// snapshots through the rbd verbs.
fn native_apply(env: &Env, image: &str, ops: &[Op]) {
    let mut size = HISTORY_SIZE;
    let f = env.file("op.diff");
    for op in ops {
        let rec = |w: &mut DiffWriter<Vec<u8>>| -> rbd_streams::Result<()> {
            w.size(size)?;
            match op {
                Op::Write(o, d) => w.data(*o, d),
                Op::Discard(o, l) | Op::Zero(o, l) => w.zero(*o, *l),
                _ => Ok(()),
            }
        };
        match op {
            Op::Write(..) | Op::Discard(..) | Op::Zero(..) => {
                let mut w = DiffWriter::new(Vec::new(), DiffFormat::V1).expect("writer");
                rec(&mut w).expect("diff record");
                std::fs::write(&f, w.finish().expect("finish")).expect("write diff");
                ok(rbd(), &["import-diff", "--no-progress", p(&f), image]);
            }
            Op::Resize(s) => {
                ok(
                    rbd(),
                    &[
                        "resize",
                        "--no-progress",
                        "--allow-shrink",
                        "--size",
                        &format!("{s}B"),
                        image,
                    ],
                );
                size = *s;
            }
            Op::Snap(s) => {
                ok(
                    rbd(),
                    &["snap", "create", "--no-progress", &format!("{image}@{s}")],
                );
            }
            Op::Protect(s) => {
                ok(rbd(), &["snap", "protect", &format!("{image}@{s}")]);
            }
        }
    }
}

/// Applies the history to an rbd-row image through the library (RADOS).
fn row_apply(env: &Env, name: &str) {
    let conf = ceph_conf();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cl = RadosCluster::connect(ClusterConfig {
            conf_path: Some(conf.into()),
            ..Default::default()
        })
        .await
        .expect("connect");
        let be = cl.open_pool("rbd", &env.ns).await.expect("open pool");
        let store = row_layer::Store::new(std::sync::Arc::new(be));
        let img = store.open(name).await.expect("open");
        apply_row(&img, &history()).await;
        img.close().await.expect("close");
    });
}

/// While the library holds `name` open (exclusive owner), `lock ls` and
/// `status` show the owner, owner-only CLI requests are forwarded to it and
/// writing from the CLI is refused.
fn check_owner_visible(env: &Env, name: &str, spec: &str) {
    let conf = ceph_conf();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cl = RadosCluster::connect(ClusterConfig {
            conf_path: Some(conf.into()),
            ..Default::default()
        })
        .await
        .expect("connect");
        let be = cl.open_pool("rbd", &env.ns).await.expect("open pool");
        let store = row_layer::Store::new(std::sync::Arc::new(be));
        let img = store.open(name).await.expect("open");
        let locks: serde_json::Value =
            serde_json::from_str(&ok_str(row(), &["lock", "ls", "--format", "json", spec]))
                .expect("json");
        assert_eq!(locks.as_array().map(Vec::len), Some(1), "{locks}");
        let st = ok_str(row(), &["status", spec]);
        assert!(st.starts_with("Watchers:\n\twatcher="), "{st}");
        // Owner-only requests from the CLI are carried out by the owner...
        let probe = format!("{spec}@owned-probe");
        ok_str(row(), &["snap", "create", &probe]);
        assert!(img.snap_list().iter().any(|s| s.name == "owned-probe"));
        ok_str(row(), &["snap", "rm", &probe]);
        assert!(!img.snap_list().iter().any(|s| s.name == "owned-probe"));
        // ...while writing from the CLI needs ownership and is refused.
        let e = fails(
            row(),
            &["bench", "--io-type", "write", "--io-total", "4K", spec],
            16,
        );
        assert!(e.contains("error opening image"), "{e}");
        img.close().await.expect("close");
    });
    assert_eq!(ok_str(row(), &["status", spec]), "Watchers: none\n");
}

/// `rbd diff --format json` and ours have the same shape.
fn check_diff_json_shape(native: &str, row_spec: &str) {
    for out in [
        ok_str(rbd(), &["diff", "--format", "json", native]),
        ok_str(row(), &["diff", "--format", "json", row_spec]),
    ] {
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let arr = v.as_array().expect("array");
        assert!(!arr.is_empty());
        for e in arr {
            let keys: Vec<&str> = e
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["offset", "length", "exists"], "{out}");
            assert!(e["offset"].is_u64() && e["length"].is_u64());
            assert!(e["exists"] == "true" || e["exists"] == "false", "{out}");
        }
        assert!(out.starts_with("[{\"offset\":"), "{out}");
    }
}

fn assert_same(what: &str, a: &[u8], b: &[u8]) {
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: contents differ first at byte {i}");
    }
}

/// `rbd export` of native `n` equals `rbd-row export` of `r` at every
/// snapshot and at the head.
fn compare_all(native: &str, row_spec: &str, snaps: &[&str]) {
    for s in snaps.iter().map(|s| Some(*s)).chain([None]) {
        let (n, r) = match s {
            Some(s) => (format!("{native}@{s}"), format!("{row_spec}@{s}")),
            None => (native.to_string(), row_spec.to_string()),
        };
        let a = ok(rbd(), &["export", "--no-progress", &n, "-"]);
        let b = ok(row(), &["export", &r, "-"]);
        assert_same(&format!("{n} vs {r}"), &a, &b);
    }
}

#[test]
#[ignore = "needs CEPH_CONF (run by tests/run-all.sh)"]
fn row_export_diff_into_real_rbd_import_diff() {
    let mut env = Env::new();
    let r = env.row("r1");
    ok(row(), &["create", "--size", "8M", &r]);
    row_apply(&env, "r1");
    let snaps = history_snaps();
    // Incremental chain: full to s1, then s(i) -> s(i+1), then s4 -> head.
    let n = env.native("n1");
    ok(rbd(), &["create", "--size", "8M", &n]);
    let f = env.file("d");
    let mut prev: Option<&str> = None;
    for s in snaps.iter().map(|s| Some(*s)).chain([None]) {
        let spec = match s {
            Some(s) => format!("{r}@{s}"),
            None => r.clone(),
        };
        let mut args = vec!["export-diff"];
        if let Some(pv) = prev {
            args.extend(["--from-snap", pv]);
        }
        args.extend([spec.as_str(), p(&f)]);
        // Like rbd, rbd-row export-diff refuses to overwrite (EEXIST).
        let _ = std::fs::remove_file(&f);
        ok(row(), &args);
        let head = std::fs::read(&f).expect("read diff");
        assert!(
            head.starts_with(b"rbd diff v1\n"),
            "export-diff must write v1"
        );
        ok(rbd(), &["import-diff", "--no-progress", p(&f), &n]);
        prev = s;
    }
    compare_all(&n, &r, &snaps);
    check_diff_json_shape(&n, &r);
    check_owner_visible(&env, "r1", &r);
    // Full diffs (no --from-snap) of a snapshot and of the head onto fresh images.
    for (i, s) in [Some("s2"), None].into_iter().enumerate() {
        let n2 = env.native(&format!("full{i}"));
        ok(rbd(), &["create", "--size", "1M", &n2]);
        let spec = s.map_or(r.clone(), |s| format!("{r}@{s}"));
        let _ = std::fs::remove_file(&f);
        ok(row(), &["export-diff", &spec, p(&f)]);
        ok(rbd(), &["import-diff", "--no-progress", p(&f), &n2]);
        let nspec = s.map_or(n2.clone(), |s| format!("{n2}@{s}"));
        let a = ok(rbd(), &["export", "--no-progress", &nspec, "-"]);
        let b = ok(row(), &["export", &spec, "-"]);
        assert_same(&format!("full diff {spec}"), &a, &b);
    }
    // And through stdout/stdin: rbd-row export-diff - | rbd import-diff -.
    let n3 = env.native("pipe");
    ok(rbd(), &["create", "--size", "1M", &n3]);
    let out = ok(row(), &["export-diff", &format!("{r}@s3"), "-"]);
    let mut c = rbd();
    c.args(["import-diff", "--no-progress", "-", &n3])
        .stdin(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn rbd");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&out).expect("pipe diff");
    }
    assert!(
        child.wait().expect("wait").success(),
        "rbd import-diff - failed"
    );
    let a = ok(
        rbd(),
        &["export", "--no-progress", &format!("{n3}@s3"), "-"],
    );
    let b = ok(row(), &["export", &format!("{r}@s3"), "-"]);
    assert_same("piped full diff", &a, &b);
}

#[test]
#[ignore = "needs CEPH_CONF (run by tests/run-all.sh)"]
fn real_rbd_export_diff_into_row_import_diff() {
    let mut env = Env::new();
    let n = env.native("src");
    ok(rbd(), &["create", "--size", "8M", &n]);
    native_apply(&env, &n, &history());
    let snaps = history_snaps();
    let r = env.row("r2");
    ok(row(), &["create", "--size", "1M", &r]);
    let f = env.file("d");
    let mut prev: Option<&str> = None;
    for s in snaps.iter().map(|s| Some(*s)).chain([None]) {
        let spec = s.map_or(n.clone(), |s| format!("{n}@{s}"));
        let mut args = vec!["export-diff", "--no-progress"];
        if let Some(pv) = prev {
            args.extend(["--from-snap", pv]);
        }
        args.extend([spec.as_str(), p(&f)]);
        // rbd export-diff refuses to overwrite (EEXIST).
        let _ = std::fs::remove_file(&f);
        ok(rbd(), &args);
        ok(row(), &["import-diff", p(&f), &r]);
        prev = s;
    }
    compare_all(&n, &r, &snaps);
    let listed = ok_str(row(), &["snap", "ls", "--format", "json", &r]);
    let v: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let names: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names, snaps,
        "import-diff creates the to-snapshots, and only them"
    );
    // A full diff of the head, through stdin.
    let r2 = env.row("r2full");
    ok(row(), &["create", "--size", "1M", &r2]);
    let out = ok(rbd(), &["export-diff", "--no-progress", &n, "-"]);
    let mut c = row();
    c.args(["import-diff", "-", &r2])
        .stdin(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&out).expect("pipe");
    }
    assert!(child.wait().expect("wait").success());
    let a = ok(rbd(), &["export", "--no-progress", &n, "-"]);
    let b = ok(row(), &["export", &r2, "-"]);
    assert_same("full head diff via stdin", &a, &b);
}

#[test]
#[ignore = "needs CEPH_CONF (run by tests/run-all.sh)"]
fn export_format_2_round_trip_with_real_rbd() {
    let mut env = Env::new();
    let n = env.native("v2src");
    ok(rbd(), &["create", "--size", "8M", &n]);
    native_apply(&env, &n, &history());
    ok(rbd(), &["image-meta", "set", &n, "owner", "alice"]);
    let snaps = history_snaps();
    let f = env.file("img.v2");
    ok(
        rbd(),
        &["export", "--no-progress", "--export-format", "2", &n, p(&f)],
    );
    let r = env.row("v2");
    ok(row(), &["import", "--export-format", "2", p(&f), &r]);
    compare_all(&n, &r, &snaps);
    let v: serde_json::Value =
        serde_json::from_str(&ok_str(row(), &["snap", "ls", "--format", "json", &r]))
            .expect("json");
    let got: Vec<(String, String)> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_string(),
                s["protected"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = snaps
        .iter()
        .map(|s| {
            (
                s.to_string(),
                if *s == "s3" { "true" } else { "false" }.to_string(),
            )
        })
        .collect();
    assert_eq!(got, want, "snapshots and protection recreated");
    assert_eq!(
        ok_str(row(), &["image-meta", "get", &r, "owner"]),
        "alice\n"
    );
    // And back: rbd-row export --export-format 2 -> rbd import --export-format 2.
    let f2 = env.file("back.v2");
    ok(row(), &["export", "--export-format", "2", &r, p(&f2)]);
    let back = env.native("back");
    ok(
        rbd(),
        &[
            "import",
            "--no-progress",
            "--export-format",
            "2",
            p(&f2),
            &back,
        ],
    );
    compare_all(&back, &r, &snaps);
    let v: serde_json::Value =
        serde_json::from_str(&ok_str(rbd(), &["snap", "ls", "--format", "json", &back]))
            .expect("json");
    let got: Vec<(String, String)> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_string(),
                s["protected"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        got, want,
        "rbd import recreates the snapshots and protection"
    );
    assert_eq!(
        ok_str(rbd(), &["image-meta", "get", &back, "owner"]),
        "alice\n"
    );
    // The native export and ours describe the same image: rbd exports of
    // both natives are identical streams of data.
    compare_all(&n, &r, &snaps);
}

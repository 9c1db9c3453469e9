//! Bad command-line input on the local store (issue 10, docs/BAD-INPUT.md):
//! image specs, names, sizes, bench parameters and stream-type confusion.
//! Every refusal is checked for its exit code and message AND for "nothing
//! lost": the images, their contents and snapshots, and the store
//! directory's layout are what they were before.

mod common;

use common::*;
use rbd_streams::{DiffFormat, DiffWriter};
use std::path::Path;
use std::process::Command;

const M: u64 = 1 << 20;

/// `ls`, then per image (name, raw content, `snap ls` json), then the
/// store's directory tree.
type State = (String, Vec<(String, Vec<u8>, String)>, Vec<String>);

impl T {
    /// Everything a refused command must leave alone: the image list, each
    /// image's content and snapshots, and the store's directory tree.
    fn state(&self) -> State {
        let ls = self.ok_str(&["ls"]);
        let images = ls
            .lines()
            .map(|name| {
                (
                    name.to_string(),
                    self.ok(&["export", name, "-"]),
                    self.ok_str(&["snap", "ls", "--format", "json", name]),
                )
            })
            .collect();
        (ls, images, tree(&self.store()))
    }
    fn seeded(&self) -> State {
        self.ok(&["create", "--size", "1M", "img"]);
        self.ok(&[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            "4K",
            "--io-total",
            "64K",
            "img",
        ]);
        self.ok(&["snap", "create", "img@s1"]);
        self.ok(&[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            "8K",
            "--io-total",
            "64K",
            "--io-pattern",
            "rand",
            "img",
        ]);
        self.state()
    }
}

/// Directories and files under `root`, relative, sorted (redb and socket
/// files included: a refused command must not create a pool directory).
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let rel = p.strip_prefix(root).expect("prefix").display().to_string();
            if p.is_dir() {
                stack.push(p);
                out.push(format!("{rel}/"));
            } else if !rel.ends_with(".sock") {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn bad_specs_names_and_sizes_are_refused_and_nothing_changes() {
    let t = T::new();
    let before = t.seeded();
    let long = "a".repeat(256);
    let long_unicode = "é".repeat(128);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // Image specs.
        (
            vec!["create", "--size", "1M", ""],
            "image name was not specified",
        ),
        (
            vec!["create", "--size", "1M", "@s"],
            "image name was not specified",
        ),
        (
            vec!["create", "--size", "1M", "../x"],
            "invalid pool name '..'",
        ),
        (
            vec!["create", "--size", "1M", "/abs"],
            "pool name was not specified",
        ),
        (
            vec!["create", "--size", "1M", "./x"],
            "invalid pool name '.'",
        ),
        (
            vec!["create", "--size", "1M", "p/../x"],
            "invalid namespace name '..'",
        ),
        (vec!["create", "--size", "1M", "a/b/c/d"], "invalid spec"),
        (
            vec!["create", "--size", "1M", "a@s"],
            "snapshot name specified",
        ),
        (vec!["create", "--size", "1M", ".hidden"], "may not contain"),
        (
            vec!["create", "--size", "1M", "--image", "../x"],
            "may not contain",
        ),
        (
            vec!["create", "--size", "1M", "--image", ""],
            "image name was not specified",
        ),
        (vec!["create", "--size", "1M", &long], "1 to 255 bytes"),
        (
            vec!["create", "--size", "1M", &long_unicode],
            "1 to 255 bytes",
        ),
        (
            vec!["create", "--size", "1M", "-p", "..", "x"],
            "invalid pool name '..'",
        ),
        (
            vec!["create", "--size", "1M", "-p", "a/b", "x"],
            "invalid pool name 'a/b'",
        ),
        (
            vec!["create", "--size", "1M", "-p", "", "x"],
            "pool name was not specified",
        ),
        (
            vec!["create", "--size", "1M", "--namespace", "a/b", "x"],
            "invalid namespace name",
        ),
        (
            vec!["create", "--size", "1M", "--namespace", ".ns", "x"],
            "invalid namespace name",
        ),
        // Snapshot names.
        (vec!["snap", "create", "img@x/y"], "may not contain"),
        (vec!["snap", "create", "img@.."], "may not contain"),
        (vec!["snap", "create", "img@a@b"], "may not contain"),
        (
            vec!["snap", "create", "img@"],
            "snapshot name was not specified",
        ),
        (
            vec!["snap", "create", "img"],
            "snapshot name was not specified",
        ),
        (
            vec!["snap", "rename", "img@s1", "img@x/y"],
            "may not contain",
        ),
        // Sizes.
        (
            vec!["create", "--size", "10X", "x"],
            "invalid size value '10X'",
        ),
        (vec!["create", "--size=-1", "x"], "invalid size value '-1'"),
        (vec!["create", "--size", "", "x"], "invalid size value ''"),
        (
            vec!["create", "--size", "1.5G", "x"],
            "invalid size value '1.5G'",
        ),
        (
            vec!["create", "--size", "0x10", "x"],
            "invalid size value '0x10'",
        ),
        (
            vec!["create", "--size", "16E", "x"],
            "invalid size value '16E'",
        ),
        (
            vec!["create", "--size", "99999999999E", "x"],
            "invalid size value",
        ),
        (
            vec!["create", "--size", "18446744073709551616", "x"],
            "invalid size value",
        ),
        (
            vec!["resize", "--size", "10X", "img"],
            "invalid size value '10X'",
        ),
        (vec!["resize", "--size", "512K", "img"], "--allow-shrink"),
        // Bench parameters.
        (
            vec!["bench", "--io-type", "write", "--io-size", "0", "img"],
            "invalid bench parameters",
        ),
        (
            vec!["bench", "--io-type", "write", "--io-threads", "0", "img"],
            "invalid bench parameters",
        ),
        (
            vec!["bench", "--io-type", "rw", "--rw-mix-read", "101", "img"],
            "invalid bench parameters",
        ),
        (
            vec!["bench", "--io-type", "write", "--io-size", "2M", "img"],
            "io-size larger than the image",
        ),
        (
            vec!["bench", "--io-type", "write", "--io-size", "10X", "img"],
            "invalid size value",
        ),
        (
            vec!["bench", "--io-type", "write", "--io-total", "-5", "img"],
            "",
        ),
        (
            vec!["bench", "--io-type", "write", "img@s1"],
            "snapshot name specified",
        ),
    ];
    for (args, says) in &cases {
        let err = t.fails(args, 22);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{args:?}: {err}"
        );
        assert!(t.state() == before, "{args:?} changed the store");
    }
    // An object size of 0 (3M is rounded to order 22, as rbd does).
    let o = run(
        local(&t.store()),
        &["create", "--size", "1M", "--object-size", "0", "x"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("'--object-size' is invalid"),
        "{err}"
    );
    assert!(t.state() == before);
    // Things that do not exist: ENOENT, nothing created.
    for args in [
        vec!["info", "nosuch"],
        vec!["export", "img@nosuch", "-"],
        vec!["diff", "--from-snap", "nosuch", "img"],
        vec!["diff", "--from-snap", "", "img"],
        vec!["snap", "rm", "img@nosuch"],
        vec!["info", "-p", "nopool", "img"],
    ] {
        t.fails(&args, 2);
        assert!(t.state() == before, "{args:?} changed the store");
    }
}

#[test]
fn odd_but_valid_names_work() {
    let t = T::new();
    let max = "m".repeat(255);
    let uni = "ü".repeat(127); // 254 bytes
    for name in ["-lead", "uni✓", "a b", "x..y", "tab\tname", &max, &uni] {
        t.ok(&["create", "--size", "1M", "--", name]);
        let info = t.ok_str(&["info", "--", name]);
        assert!(info.contains("size 1 MiB"), "{name}: {info}");
        t.ok(&["snap", "create", &format!("--image={name}"), "--snap", "s✓"]);
    }
    let ls = t.ok_str(&["ls"]);
    assert_eq!(ls.lines().count(), 7, "{ls}");
    // Pools and namespaces are directories: odd names stay inside the store.
    t.ok(&["create", "--size", "1M", "p-1/ns✓/img"]);
    assert_eq!(t.ok_str(&["ls", "p-1/ns✓"]), "img\n");
    let top = tree(&t.store());
    assert!(
        top.iter().all(|p| !p.contains("..")),
        "nothing escapes the store: {top:?}"
    );
    for name in ["-lead", "uni✓", "a b", "x..y", "tab\tname", &max, &uni] {
        t.ok(&["snap", "purge", "--", name]);
        t.ok(&["rm", "--", name]);
    }
    assert_eq!(t.ok_str(&["ls"]), "");
}

/// The local store reached through a symlinked directory works and
/// writes only into the link's target.
#[test]
fn symlinked_store_directory() {
    let t = T::new();
    let real = t.file("real");
    std::fs::create_dir(&real).expect("mkdir");
    let link = t.file("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    ok(local(&link), &["create", "--size", "1M", "img"]);
    assert_eq!(ok_str(local(&real), &["ls"]), "img\n");
    assert!(real.join("rbd").is_dir());
    let mut top: Vec<String> = std::fs::read_dir(t.dir.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["link", "real"]);
    // A store path that is a file, not a directory: a clear error.
    std::fs::write(t.file("afile"), b"x").expect("write");
    let o = run(local(&t.file("afile")), &["create", "--size", "1M", "img"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(t.file("afile")).expect("read"), b"x");
}

/// An `rbd image v2` export given to import-diff, a diff given to
/// `import --export-format 2`, a v2 diff given to import-diff, and a diff
/// whose start snapshot exists by name on a diverged image.
#[test]
fn stream_type_confusion() {
    let t = T::new();
    let before = t.seeded();
    let img2 = t.file("img.v2");
    t.ok(&["export", "--export-format", "2", "img", s(&img2)]);
    let d1 = t.file("d1.diff");
    t.ok(&["export-diff", "--from-snap", "s1", "img", s(&d1)]);
    let e = t.fails(&["import-diff", s(&img2), "img"], 22);
    assert!(e.contains("bad banner"), "{e}");
    assert!(t.state() == before);
    let e = t.fails(&["import", "--export-format", "2", s(&d1), "new"], 22);
    assert!(e.contains("bad banner"), "{e}");
    assert!(t.state() == before, "a refused import left an image behind");
    // A v2 diff is applied exactly like the v1 diff with the same records.
    let mut w = DiffWriter::new(Vec::new(), DiffFormat::V2).expect("w");
    w.from_snap("s1").expect("f");
    w.to_snap("s2").expect("t");
    w.size(M).expect("s");
    w.data(4096, &[7u8; 5000]).expect("d");
    w.zero(65536, 8192).expect("z");
    let v2 = t.file("v2.diff");
    std::fs::write(&v2, w.finish().expect("finish")).expect("write");
    t.ok(&["import-diff", s(&v2), "img"]);
    let mut expect = before.1[0].1.clone();
    expect[4096..9096].fill(7);
    expect[65536..65536 + 8192].fill(0);
    assert_eq!(t.ok(&["export", "img", "-"]), expect);
    assert!(t.ok_str(&["snap", "ls", "img"]).contains("s2"));
    // Wrong base: another image with a snapshot called s1 but other data.
    // As with rbd, only the name is checked; exactly the diff's extents are
    // applied on top of whatever the image holds, nothing else changes.
    t.ok(&["create", "--size", "1M", "other"]);
    t.ok(&["snap", "create", "other@s1"]);
    t.ok(&["import-diff", s(&d1), "other"]);
    let other = t.ok(&["export", "other", "-"]);
    let img_s1 = t.ok(&["export", "img@s1", "-"]);
    let img_head_then = &before.1[0].1;
    for (i, (&o, &h)) in other.iter().zip(img_head_then.iter()).enumerate() {
        // Every byte is either the diff's (head) byte or untouched zero.
        assert!(o == h || o == 0, "byte {i}");
    }
    assert_ne!(other, img_s1);
    // A diff whose start snapshot is missing: ENOENT, nothing applied
    // (also local.rs::malformed_diffs_are_refused_and_the_image_is_unchanged).
    let fresh = t.state();
    t.ok(&["create", "--size", "1M", "nobase"]);
    let e = t.fails(&["import-diff", s(&d1), "nobase"], 2);
    assert!(e.contains("start snapshot 's1' does not exist"), "{e}");
    assert_eq!(t.ok(&["export", "nobase", "-"]), vec![0u8; M as usize]);
    assert_eq!(t.ok_str(&["snap", "ls", "nobase"]), "");
    t.ok(&["rm", "nobase"]);
    assert!(t.state() == fresh);
}

/// A huge `--io-size` on a huge image must be refused before the benchmark
/// allocates its buffer (run under a 2 GiB address-space limit, so a
/// regression aborts instead of exhausting the machine).
/// Failed before bench.rs bounded its buffers: it aborted on the allocation.
#[test]
fn bench_refuses_an_io_size_it_cannot_allocate() {
    let t = T::new();
    t.ok(&["create", "--size", "8E", "big"]);
    let before = t.state_small("big");
    let bin = env!("CARGO_BIN_EXE_rbd-row");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 2097152; exec '{bin}' --no-progress --store '{}' bench --io-type write \
             --io-size 1T --io-total 1T big",
            s(&t.store())
        ))
        .env_remove("RBD_ROW_STORE")
        .output()
        .expect("spawn");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(22), "{err}");
    assert!(err.contains("io-size"), "{err}");
    assert!(t.state_small("big") == before);
}

impl T {
    /// Like `state` for an image too big to export: its info and snapshots.
    fn state_small(&self, name: &str) -> (String, String) {
        (
            self.ok_str(&["info", "--format", "json", name]),
            self.ok_str(&["diff", name]),
        )
    }
}

/// A reader that goes away (`rbd-row ls | head -1`, `--help | grep -q`)
/// ends rbd-row quietly instead of an "Error: Broken pipe" report and
/// exit 1. Failed before main handled EPIPE on standard output.
#[test]
fn a_closed_stdout_ends_quietly() {
    let bin = env!("CARGO_BIN_EXE_rbd-row");
    // `true` exits at once, so the pipe's read end is usually closed
    // before rbd-row writes its help.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{bin}' --help | true; sleep 0.2; '{bin}' --help | true"
        ))
        .output()
        .expect("spawn");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("Broken pipe"), "{err}");
    assert!(o.status.success(), "{err}");
}

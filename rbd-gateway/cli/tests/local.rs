//! Every verb on the embedded local store (a temporary directory).

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rbd_streams::{DiffFormat, DiffReader, DiffRecord, DiffWriter};
use std::path::Path;

impl T {
    /// Writes `(offset, data)` extents into `spec` with a v1 diff and
    /// import-diff (keeping size `size`, optionally ending at snapshot `to`).
    fn write(&self, spec: &str, size: u64, exts: &[(u64, Vec<u8>)], to: Option<&str>) {
        let mut w = DiffWriter::new(Vec::new(), DiffFormat::V1).expect("writer");
        if let Some(t) = to {
            w.to_snap(t).expect("to");
        }
        w.size(size).expect("size");
        for (o, d) in exts {
            w.data(*o, d).expect("data");
        }
        let f = self.file("w.diff");
        std::fs::write(&f, w.finish().expect("finish")).expect("write");
        self.ok(&["import-diff", s(&f), spec]);
    }
    fn export(&self, spec: &str) -> Vec<u8> {
        self.ok(&["export", spec, "-"])
    }
    fn snaps(&self, spec: &str) -> Vec<(String, bool)> {
        self.json(&["snap", "ls", "--format", "json", spec])
            .as_array()
            .expect("array")
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap_or_default().to_string(),
                    v["protected"] == "true",
                )
            })
            .collect()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut r = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..n).map(|_| r.gen()).collect()
}

const M: u64 = 1 << 20;

#[test]
fn create_ls_info_resize_rm_and_pools() {
    let t = T::new();
    t.ok(&["create", "--size", "8M", "a"]);
    t.ok(&[
        "create",
        "--size",
        "2",
        "--object-size",
        "1M",
        "--grain-size",
        "8K",
        "rbd/b",
    ]);
    assert_eq!(t.ok_str(&["ls"]), "a\nb\n");
    assert_eq!(
        t.json(&["ls", "--format", "json"]),
        serde_json::json!(["a", "b"])
    );
    let info = t.json(&["info", "--format", "json", "b"]);
    assert_eq!(info["size"], 2 * M, "bare --size is MiB, as in rbd");
    assert_eq!(info["object_size"], M);
    assert_eq!(info["order"], 20);
    assert_eq!(info["grain_size"], 8192);
    assert!(t
        .ok_str(&["info", "a"])
        .starts_with("rbd image 'a':\n\tsize 8 MiB in 2 objects\n"));
    let long = t.json(&["ls", "-l", "--format", "json"]);
    assert_eq!(long[0]["image"], "a");
    assert_eq!(long[0]["size"], 8 * M);
    assert!(t.ok_str(&["ls", "-l"]).starts_with("NAME"));
    let pretty = t.ok_str(&["ls", "--format", "json", "--pretty-format"]);
    assert!(pretty.contains("\n    \"a\""), "{pretty}");
    // Errors as rbd prints them, errno as exit code.
    let e = t.fails(&["create", "--size", "1M", "a"], 17);
    assert!(e.contains("rbd-row: create error: (17) File exists"), "{e}");
    let e = t.fails(&["info", "nosuch"], 2);
    assert!(
        e.contains("rbd-row: error opening image nosuch: (2) No such file or directory"),
        "{e}"
    );
    let e = t.fails(&["create", "c"], 22);
    assert!(e.contains("must specify --size"), "{e}");
    // Resize: grow, refused shrink, allowed shrink.
    t.ok(&["resize", "--size", "16M", "a"]);
    assert_eq!(t.json(&["info", "--format", "json", "a"])["size"], 16 * M);
    let e = t.fails(&["resize", "--size", "4M", "a"], 22);
    assert!(
        e.contains("shrinking an image is only allowed with the --allow-shrink flag"),
        "{e}"
    );
    assert_eq!(t.json(&["info", "--format", "json", "a"])["size"], 16 * M);
    t.ok(&["resize", "--size", "4096K", "--allow-shrink", "a"]);
    assert_eq!(t.json(&["info", "--format", "json", "a"])["size"], 4 * M);
    // Pools and namespaces are separate directories: same names coexist.
    t.ok(&["create", "--size", "1M", "p2/ns1/a"]);
    t.ok(&["create", "--size", "3M", "-p", "p2", "--image", "a"]);
    assert!(t.store().join("p2").join("ns1").is_dir());
    assert_eq!(t.ok_str(&["ls", "p2/ns1"]), "a\n");
    assert_eq!(t.ok_str(&["ls", "-p", "p2"]), "a\n");
    assert_eq!(t.json(&["info", "--format", "json", "p2/ns1/a"])["size"], M);
    assert_eq!(
        t.json(&["info", "--format", "json", "--pool", "p2", "a"])["size"],
        3 * M
    );
    assert_eq!(t.ok_str(&["ls", "nopool"]), "");
    // rm
    t.ok(&["rm", "b"]);
    assert_eq!(t.ok_str(&["ls"]), "a\n");
    t.fails(&["rm", "b"], 2);
    t.ok(&["snap", "create", "a@s"]);
    let e = t.fails(&["rm", "a"], 39);
    assert!(e.contains("image has snapshots"), "{e}");
    assert_eq!(
        t.ok_str(&["ls", "p2/ns1"]),
        "a\n",
        "other namespaces untouched"
    );
}

#[test]
fn import_export_raw_and_snapshots() {
    let t = T::new();
    let orig = random((3 * M + 1234) as usize, 1);
    std::fs::write(t.file("raw"), &orig).expect("write");
    t.ok(&["import", s(&t.file("raw")), "img"]);
    assert_eq!(t.export("img"), orig);
    t.ok(&["export", "img", s(&t.file("out"))]);
    assert_eq!(std::fs::read(t.file("out")).expect("read"), orig);
    t.ok(&["snap", "create", "img@s1"]);
    t.fails(&["snap", "create", "img@s1"], 17);
    let new = random(10_000, 2);
    t.write("img", orig.len() as u64, &[(777, new.clone())], None);
    let mut changed = orig.clone();
    changed[777..777 + new.len()].copy_from_slice(&new);
    assert_eq!(t.export("img"), changed);
    assert_eq!(t.export("img@s1"), orig, "the snapshot is frozen");
    assert_eq!(t.ok(&["export", "--snap", "s1", "img", "-"]), orig);
    let ls = t.json(&["snap", "ls", "--format", "json", "img"]);
    assert_eq!(ls[0]["name"], "s1");
    assert_eq!(ls[0]["size"], orig.len() as u64);
    assert_eq!(ls[0]["protected"], "false");
    assert!(t.ok_str(&["snap", "ls", "img"]).starts_with("SNAPID  NAME"));
    // rollback
    t.ok(&["snap", "rollback", "img@s1"]);
    assert_eq!(t.export("img"), orig);
    // rename, protect, refused removal, unprotect, purge
    t.ok(&["snap", "rename", "img@s1", "img@s2"]);
    t.ok(&["snap", "create", "img@s3"]);
    t.ok(&["snap", "protect", "img@s2"]);
    assert_eq!(
        t.snaps("img"),
        vec![("s2".to_string(), true), ("s3".to_string(), false)]
    );
    let e = t.fails(&["snap", "rm", "img@s2"], 16);
    assert!(
        e.contains("snapshot 's2' is protected from removal."),
        "{e}"
    );
    let e = t.fails(&["snap", "purge", "img"], 16);
    assert!(e.contains("protected"), "{e}");
    assert_eq!(
        t.snaps("img"),
        vec![("s2".to_string(), true)],
        "purge removed the unprotected one"
    );
    t.ok(&["snap", "unprotect", "img@s2"]);
    t.ok(&["snap", "purge", "img"]);
    assert!(t.snaps("img").is_empty());
    t.fails(&["snap", "rm", "img@nosuch"], 2);
    // import from stdin
    let mut c = local(&t.store());
    c.args(["import", "-", "fromstdin"])
        .stdin(std::fs::File::open(t.file("raw")).expect("open"));
    let o = c.output().expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(t.export("fromstdin"), orig);
}

#[test]
fn clone_children_flatten() {
    let t = T::new();
    let data = random(2 * M as usize, 3);
    std::fs::write(t.file("raw"), &data).expect("write");
    t.ok(&["import", s(&t.file("raw")), "base"]);
    t.ok(&["snap", "create", "base@gold"]);
    let e = t.fails(&["clone", "base@gold", "vm1"], 22);
    assert!(e.contains("clone error"), "{e}");
    t.ok(&["snap", "protect", "base@gold"]);
    t.ok(&["clone", "base@gold", "vm1"]);
    assert_eq!(t.ok_str(&["children", "base@gold"]), "rbd/vm1\n");
    assert_eq!(
        t.json(&["children", "--format", "json", "base@gold"]),
        serde_json::json!([{"pool": "rbd", "pool_namespace": "", "image": "vm1"}])
    );
    let info = t.json(&["info", "--format", "json", "vm1"]);
    assert_eq!(info["parent"]["image"], "base");
    assert_eq!(info["parent"]["snapshot"], "gold");
    assert_eq!(t.export("vm1"), data);
    let ls = t.json(&["ls", "-l", "--format", "json"]);
    assert!(ls
        .as_array()
        .expect("a")
        .iter()
        .any(|e| e["image"] == "vm1" && e["parent"]["snapshot"] == "gold"));
    t.write("vm1", 2 * M, &[(5, vec![9; 100])], None);
    t.ok(&["flatten", "vm1"]);
    let info = t.json(&["info", "--format", "json", "vm1"]);
    assert!(info.get("parent").is_none(), "{info}");
    let mut want = data.clone();
    want[5..105].fill(9);
    assert_eq!(t.export("vm1"), want);
    assert_eq!(t.export("base@gold"), data);
}

fn records(bytes: &[u8]) -> Vec<DiffRecord> {
    let mut r = DiffReader::new(bytes).expect("valid diff");
    let mut v = Vec::new();
    while let Some(x) = r.next_record().expect("record") {
        v.push(x);
    }
    v
}

#[test]
fn diff_export_diff_import_diff_merge_diff() {
    let t = T::new();
    t.ok(&["create", "--size", "4M", "img"]);
    let d1 = random(8192, 4);
    t.write(
        "img",
        4 * M,
        &[
            (0, d1.clone()),
            (M, vec![0; 4096]),
            (2 * M + 3, vec![1; 10]),
        ],
        Some("s1"),
    );
    // diff JSON shape is rbd's: offset, length, exists as a string.
    let v = t.json(&["diff", "--format", "json", "img"]);
    let first = &v[0];
    assert_eq!(first["offset"], 0);
    assert_eq!(first["length"], 8192);
    assert_eq!(first["exists"], "true");
    let plain = t.ok_str(&["diff", "img"]);
    let rows: Vec<Vec<&str>> = plain
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], vec!["Offset", "Length", "Type"]);
    assert_eq!(rows[1], vec!["0", "8192", "data"]);
    t.write("img", 4 * M, &[(4096, vec![7; 4096])], None);
    let mut w = DiffWriter::new(Vec::new(), DiffFormat::V1).expect("w");
    w.size(4 * M).expect("s");
    w.zero(M, 4096).expect("z");
    std::fs::write(t.file("z.diff"), w.finish().expect("f")).expect("write");
    t.ok(&["import-diff", s(&t.file("z.diff")), "img"]);
    t.ok(&["snap", "create", "img@s2"]);
    let v = t.json(&["diff", "--from-snap", "s1", "--format", "json", "img"]);
    let got: Vec<(u64, u64, String)> = v
        .as_array()
        .expect("a")
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap_or(0),
                e["length"].as_u64().unwrap_or(0),
                e["exists"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(4096, 4096, "true".into()), (M, 4096, "false".into())]
    );
    let w = t.json(&[
        "diff",
        "--from-snap",
        "s1",
        "--whole-object",
        "--format",
        "json",
        "img",
    ]);
    assert_eq!(w[0]["offset"], 0);
    assert_eq!(w[0]["length"], 4 * M);
    // export-diff: v1, 'z' for extents that read back as zeros.
    t.ok(&["export-diff", "img@s1", s(&t.file("full.diff"))]);
    let full = std::fs::read(t.file("full.diff")).expect("read");
    assert!(full.starts_with(b"rbd diff v1\n"));
    let recs = records(&full);
    assert_eq!(recs[0], DiffRecord::ToSnap("s1".into()));
    assert!(recs.contains(&DiffRecord::Size(4 * M)));
    assert!(
        recs.contains(&DiffRecord::Zero {
            offset: M,
            len: 4096
        }),
        "{recs:?}"
    );
    assert!(recs.contains(&DiffRecord::Data {
        offset: 0,
        len: 8192
    }));
    t.ok(&[
        "export-diff",
        "--from-snap",
        "s1",
        "img@s2",
        s(&t.file("inc.diff")),
    ]);
    let inc = records(&std::fs::read(t.file("inc.diff")).expect("read"));
    assert_eq!(inc[0], DiffRecord::FromSnap("s1".into()));
    assert!(inc.contains(&DiffRecord::Zero {
        offset: M,
        len: 4096
    }));
    // Apply both to a fresh image: identical at s1 and s2.
    t.ok(&["create", "--size", "1M", "copy"]);
    t.ok(&["import-diff", s(&t.file("full.diff")), "copy"]);
    t.ok(&["import-diff", s(&t.file("inc.diff")), "copy"]);
    assert_eq!(t.export("copy@s1"), t.export("img@s1"));
    assert_eq!(t.export("copy@s2"), t.export("img@s2"));
    assert_eq!(t.snaps("copy").len(), 2);
    // Applying again is refused (end snapshot exists) and changes nothing.
    let e = t.fails(&["import-diff", s(&t.file("inc.diff")), "copy"], 17);
    assert!(e.contains("end snapshot 's2' already exists"), "{e}");
    // merge-diff full(∅→s1) + inc(s1→s2) = ∅→s2.
    t.ok(&[
        "merge-diff",
        s(&t.file("full.diff")),
        s(&t.file("inc.diff")),
        s(&t.file("m.diff")),
    ]);
    t.ok(&["create", "--size", "1M", "merged"]);
    t.ok(&["import-diff", s(&t.file("m.diff")), "merged"]);
    assert_eq!(t.export("merged@s2"), t.export("img@s2"));
    // export-diff to stdout is the same stream.
    assert_eq!(t.ok(&["export-diff", "img@s1", "-"]), full);
    // whole-object export-diff applies to the same result.
    t.ok(&[
        "export-diff",
        "--whole-object",
        "--from-snap",
        "s1",
        "img@s2",
        s(&t.file("wo.diff")),
    ]);
    t.ok(&["create", "--size", "1M", "wo"]);
    t.ok(&["import-diff", s(&t.file("full.diff")), "wo"]);
    t.ok(&["import-diff", s(&t.file("wo.diff")), "wo"]);
    assert_eq!(t.export("wo@s2"), t.export("img@s2"));
}

#[test]
fn export_format_2_round_trip() {
    let t = T::new();
    t.ok(&["create", "--size", "2M", "--object-size", "1M", "img"]);
    t.write("img", 2 * M, &[(100, random(5000, 5))], Some("a"));
    t.ok(&["snap", "protect", "img@a"]);
    t.ok(&["resize", "--size", "3M", "img"]);
    t.write("img", 3 * M, &[(2 * M + 1, random(3000, 6))], Some("b"));
    t.write("img", 3 * M, &[(0, random(4096, 7))], None);
    t.ok(&["image-meta", "set", "img", "k1", "v1"]);
    t.ok(&["export", "--export-format", "2", "img", s(&t.file("e2"))]);
    let bytes = std::fs::read(t.file("e2")).expect("read");
    assert!(bytes.starts_with(b"rbd image v2\n"));
    let sum = rbd_streams::validate_image_export(&bytes[..]).expect("valid export");
    assert_eq!(sum.diffs.len(), 3);
    assert_eq!(sum.header.order, Some(20));
    t.ok(&[
        "import",
        "--export-format",
        "2",
        s(&t.file("e2")),
        "p2/copy",
    ]);
    assert_eq!(
        t.snaps("p2/copy"),
        vec![("a".to_string(), true), ("b".to_string(), false)]
    );
    for v in ["@a", "@b", ""] {
        assert_eq!(
            t.export(&format!("p2/copy{v}")),
            t.export(&format!("img{v}")),
            "{v}"
        );
    }
    assert_eq!(t.ok_str(&["image-meta", "get", "p2/copy", "k1"]), "v1\n");
    assert_eq!(
        t.json(&["info", "--format", "json", "p2/copy"])["object_size"],
        M
    );
    // A corrupt export is refused and leaves no image behind.
    std::fs::write(t.file("bad"), &bytes[..bytes.len() - 3]).expect("write");
    t.fails(
        &["import", "--export-format", "2", s(&t.file("bad")), "bad"],
        22,
    );
    assert!(!t.ok_str(&["ls"]).contains("bad"));
}

#[test]
fn du_bench_lock_status_meta_bookmarks() {
    let t = T::new();
    t.ok(&["create", "--size", "4M", "img"]);
    let out = t.ok_str(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4K",
        "--io-threads",
        "4",
        "--io-total",
        "1M",
        "--io-pattern",
        "rand",
        "img",
    ]);
    let last = out.lines().last().unwrap_or_default();
    let parts: Vec<&str> = last.split_whitespace().collect();
    assert_eq!(parts.first(), Some(&"elapsed:"), "{out}");
    assert_eq!(parts.get(2), Some(&"ops:"));
    assert_eq!(parts.get(3), Some(&"256"));
    assert_eq!(parts.get(4), Some(&"ops/sec:"));
    assert_eq!(parts.get(6), Some(&"bytes/sec:"));
    let out = t.ok_str(&[
        "bench",
        "--io-type",
        "readwrite",
        "--io-total",
        "64K",
        "img",
    ]);
    assert!(out.contains("ops: 16 "), "{out}");
    t.ok(&[
        "bench",
        "--io-type",
        "read",
        "--io-size",
        "64K",
        "--io-total",
        "1M",
        "--io-pattern",
        "seq",
        "img",
    ]);
    t.fails(&["bench", "img"], 22);
    let du = t.json(&["du", "--format", "json", "img"]);
    assert_eq!(du["images"][0]["provisioned_size"], 4 * M);
    assert!(du["images"][0]["used_size"].as_u64().unwrap_or(0) > 0);
    t.ok(&["snap", "create", "img@s1"]);
    let du = t.json(&["du", "--format", "json"]);
    assert_eq!(du["images"][0]["snapshot"], "s1");
    assert_eq!(du["total_provisioned_size"], 4 * M);
    assert!(t.ok_str(&["du"]).contains("<TOTAL>"));
    // Nobody holds the image between commands.
    assert_eq!(t.ok_str(&["lock", "ls", "img"]), "");
    assert_eq!(
        t.json(&["lock", "ls", "--format", "json", "img"]),
        serde_json::json!([])
    );
    assert_eq!(t.ok_str(&["status", "img"]), "Watchers: none\n");
    assert_eq!(
        t.json(&["status", "--format", "json", "img"]),
        serde_json::json!({"watchers": []})
    );
    // image-meta
    t.ok(&["image-meta", "set", "img", "owner", "bob"]);
    t.ok(&["image-meta", "set", "img", "tier", "gold"]);
    assert_eq!(t.ok_str(&["image-meta", "get", "img", "owner"]), "bob\n");
    assert_eq!(
        t.json(&["image-meta", "list", "--format", "json", "img"]),
        serde_json::json!({"owner": "bob", "tier": "gold"})
    );
    assert!(t
        .ok_str(&["image-meta", "list", "img"])
        .starts_with("There are 2 metadata on this image:"));
    t.ok(&["image-meta", "remove", "img", "owner"]);
    let e = t.fails(&["image-meta", "get", "img", "owner"], 2);
    assert!(e.contains("(2) No such file or directory"), "{e}");
    // bookmarks: a diff base that outlives its snapshot.
    t.write("img", 4 * M, &[(M, vec![3; 4096])], None);
    t.ok(&["bookmark", "create", "img@s1", "b1"]);
    assert_eq!(
        t.json(&["bookmark", "ls", "--format", "json", "img"])[0]["name"],
        "b1"
    );
    t.ok(&["snap", "rm", "img@s1"]);
    let d = t.json(&["diff", "--from-snap", "b1", "--format", "json", "img"]);
    assert_eq!(
        d,
        serde_json::json!([{"offset": M, "length": 4096, "exists": "true"}])
    );
    t.ok(&["bookmark", "rm", "img", "b1"]);
    assert_eq!(t.ok_str(&["bookmark", "ls", "img"]), "");
    t.fails(&["diff", "--from-snap", "b1", "img"], 2);
}

/// Streams that must be refused before anything is written.
fn malformed(valid: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let mut bad_banner = valid.to_vec();
    bad_banner[4] = b'X';
    v.push(("bad banner", bad_banner));
    v.push(("truncated in data", valid[..valid.len() / 2].to_vec()));
    v.push(("missing end", valid[..valid.len() - 1].to_vec()));
    let mut trailing = valid.to_vec();
    trailing.extend_from_slice(b"garbage");
    v.push(("trailing data", trailing));
    v.push(("empty", Vec::new()));
    // No size record.
    let mut no_size = b"rbd diff v1\n".to_vec();
    no_size.push(b'w');
    no_size.extend_from_slice(&0u64.to_le_bytes());
    no_size.extend_from_slice(&4u64.to_le_bytes());
    no_size.extend_from_slice(&[1, 2, 3, 4]);
    no_size.push(b'e');
    v.push(("no size", no_size));
    // Extent beyond the size.
    let mut beyond = b"rbd diff v1\ns".to_vec();
    beyond.extend_from_slice(&4096u64.to_le_bytes());
    beyond.push(b'z');
    beyond.extend_from_slice(&4000u64.to_le_bytes());
    beyond.extend_from_slice(&1000u64.to_le_bytes());
    beyond.push(b'e');
    v.push(("extent beyond size", beyond));
    // Unknown tag, absurd length.
    let mut unknown = b"rbd diff v1\ns".to_vec();
    unknown.extend_from_slice(&4096u64.to_le_bytes());
    unknown.push(b'Q');
    unknown.push(b'e');
    v.push(("unknown tag", unknown));
    let mut absurd = b"rbd diff v1\ns".to_vec();
    absurd.extend_from_slice(&(1u64 << 40).to_le_bytes());
    absurd.push(b'w');
    absurd.extend_from_slice(&0u64.to_le_bytes());
    absurd.extend_from_slice(&(1u64 << 39).to_le_bytes());
    absurd.extend_from_slice(&[7; 100]);
    absurd.push(b'e');
    v.push(("data shorter than declared", absurd));
    v
}

#[test]
fn malformed_diffs_are_refused_and_the_image_is_unchanged() {
    let t = T::new();
    let data = random(2 * M as usize, 8);
    std::fs::write(t.file("raw"), &data).expect("write");
    t.ok(&["import", s(&t.file("raw")), "img"]);
    t.ok(&["snap", "create", "img@base"]);
    let mut w = DiffWriter::new(Vec::new(), DiffFormat::V1).expect("w");
    w.from_snap("base").expect("f");
    w.to_snap("next").expect("t");
    w.size(3 * M).expect("s");
    w.data(10, &random(100_000, 9)).expect("w");
    w.zero(M, 8192).expect("z");
    w.data(2 * M + 5, &random(5000, 10)).expect("w");
    let valid = w.finish().expect("finish");
    let before = (
        t.export("img"),
        t.snaps("img"),
        t.json(&["info", "--format", "json", "img"])["size"].clone(),
    );
    let check = |what: &str| {
        let now = (
            t.export("img"),
            t.snaps("img"),
            t.json(&["info", "--format", "json", "img"])["size"].clone(),
        );
        assert!(now == before, "{what}: image changed");
    };
    for (what, bytes) in malformed(&valid) {
        std::fs::write(t.file("bad.diff"), &bytes).expect("write");
        let o = run(
            local(&t.store()),
            &["import-diff", s(&t.file("bad.diff")), "img"],
        );
        assert!(!o.status.success(), "{what}: accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("rbd-row: import-diff failed: (22) Invalid argument"),
            "{what}: {err}"
        );
        check(what);
        // Same through stdin.
        let mut c = local(&t.store());
        c.args(["import-diff", "-", "img"])
            .stdin(std::fs::File::open(t.file("bad.diff")).expect("open"));
        assert!(
            !c.output().expect("run").status.success(),
            "{what} (stdin): accepted"
        );
        check(what);
    }
    // A from-snapshot the image does not have.
    let mut w = DiffWriter::new(Vec::new(), DiffFormat::V1).expect("w");
    w.from_snap("nosuch").expect("f");
    w.size(2 * M).expect("s");
    w.data(0, &[1; 10]).expect("w");
    std::fs::write(t.file("nofrom.diff"), w.finish().expect("f")).expect("write");
    let e = t.fails(&["import-diff", s(&t.file("nofrom.diff")), "img"], 2);
    assert!(e.contains("start snapshot 'nosuch' does not exist"), "{e}");
    check("missing from-snap");
    // A to-snapshot that already exists.
    let mut w = DiffWriter::new(Vec::new(), DiffFormat::V1).expect("w");
    w.to_snap("base").expect("t");
    w.size(2 * M).expect("s");
    std::fs::write(t.file("dupto.diff"), w.finish().expect("f")).expect("write");
    t.fails(&["import-diff", s(&t.file("dupto.diff")), "img"], 17);
    check("existing to-snap");
    // Failure in the middle of applying a valid diff (after a resize and a
    // write): rolled back, temporary snapshot gone.
    std::fs::write(t.file("ok.diff"), &valid).expect("write");
    let mut c = local(&t.store());
    c.env("RBD_ROW_TEST_FAIL_IMPORT_AFTER", "2");
    let e = fails(c, &["import-diff", s(&t.file("ok.diff")), "img"], 5);
    assert!(e.contains("import-diff failed"), "{e}");
    check("failure mid-way");
    // The valid stream then applies.
    t.ok(&["import-diff", s(&t.file("ok.diff")), "img"]);
    assert_eq!(t.snaps("img").len(), 2);
    assert_eq!(t.json(&["info", "--format", "json", "img"])["size"], 3 * M);
}

#[test]
fn help_everywhere_and_usage_errors() {
    let verbs: &[&[&str]] = &[
        &["create"],
        &["ls"],
        &["info"],
        &["rm"],
        &["resize"],
        &["snap", "create"],
        &["snap", "ls"],
        &["snap", "rm"],
        &["snap", "rename"],
        &["snap", "rollback"],
        &["snap", "protect"],
        &["snap", "unprotect"],
        &["snap", "purge"],
        &["clone"],
        &["children"],
        &["flatten"],
        &["diff"],
        &["du"],
        &["export"],
        &["import"],
        &["export-diff"],
        &["import-diff"],
        &["merge-diff"],
        &["image-meta", "get"],
        &["image-meta", "set"],
        &["image-meta", "list"],
        &["image-meta", "remove"],
        &["lock", "ls"],
        &["status"],
        &["bench"],
        &["bookmark", "create"],
        &["bookmark", "ls"],
        &["bookmark", "rm"],
    ];
    for v in verbs {
        let mut args = v.to_vec();
        args.push("--help");
        let out = ok_str(rbd_row(), &args);
        assert!(out.contains("Example:"), "{v:?}: {out}");
    }
    let o = run(rbd_row(), &["frobnicate"]);
    assert!(!o.status.success());
    let t = T::new();
    t.fails(&["create", "--size", "10X", "a"], 22);
    t.fails(&["snap", "create", "a"], 22);
    t.fails(&["ls", "--format", "xml"], 22);
}

#[test]
fn store_selection_from_environment() {
    let t = T::new();
    let mut c = rbd_row();
    c.env("RBD_ROW_STORE", t.store());
    ok(c, &["create", "--size", "1M", "viaenv"]);
    assert_eq!(t.ok_str(&["ls"]), "viaenv\n");
    // The default store, announced once (when it is created).
    let xdg = t.dir.path().join("xdg");
    let run_default = |args: &[&str]| {
        let mut c = rbd_row();
        c.env("XDG_DATA_HOME", &xdg);
        let o = run(c, args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    if Path::new("/etc/ceph/ceph.conf").exists() {
        return; // this host would select Ceph
    }
    let e1 = run_default(&["create", "--size", "1M", "d"]);
    assert!(e1.contains("using the local store"), "{e1}");
    assert!(xdg.join("rbd-row/store/rbd").is_dir());
    let e2 = run_default(&["ls"]);
    assert!(
        !e2.contains("using the local store"),
        "announced twice: {e2}"
    );
}

/// `snap rollback` and `snap rm` on an image nobody serves leave what they
/// discard to the next writer; `reclaim` deletes it now, and the data every
/// view sees is unchanged by it.
#[test]
fn reclaim_after_rollback_and_snapshot_removal() {
    let t = T::new();
    let orig = random((2 * M) as usize, 3);
    std::fs::write(t.file("raw"), &orig).expect("write");
    t.ok(&["import", s(&t.file("raw")), "img"]);
    t.ok(&["snap", "create", "img@s1"]);
    let new = random(300_000, 4);
    t.write("img", orig.len() as u64, &[(4096, new.clone())], None);
    t.ok(&["snap", "create", "img@s2"]);
    t.ok(&["snap", "rollback", "img@s1"]);
    t.ok(&["snap", "rm", "img@s2"]);
    t.ok(&["reclaim", "img"]);
    t.ok(&["reclaim", "img"]);
    assert_eq!(t.export("img"), orig);
    assert_eq!(t.export("img@s1"), orig);
    t.fails(&["reclaim", "nosuch"], 2);
}

#[test]
fn defrag_rewrites_scattered_objects_and_keeps_every_view() {
    let t = T::new();
    let data = random(8 * M as usize, 7);
    std::fs::write(t.file("raw"), &data).expect("write");
    t.ok(&["import", s(&t.file("raw")), "vol"]);
    let mut want = data.clone();
    let mut snaps = Vec::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(8);
    for n in 0..6 {
        let name = format!("vol@s{n}");
        t.ok(&["snap", "create", &name]);
        snaps.push((name, want.clone()));
        let mut exts: Vec<(u64, Vec<u8>)> = (0..64)
            .map(|_| (rng.gen_range(0..2048u64) * 4096, random(4096, rng.gen())))
            .collect();
        exts.sort_by_key(|e| e.0);
        exts.dedup_by_key(|e| e.0);
        for (o, d) in &exts {
            want[*o as usize..*o as usize + 4096].copy_from_slice(d);
        }
        t.write("vol", 8 * M, &exts, None);
    }
    let diffs = |t: &T| -> Vec<serde_json::Value> {
        (0..6)
            .map(|n| {
                t.json(&[
                    "diff",
                    "--from-snap",
                    &format!("s{n}"),
                    "--format",
                    "json",
                    "vol",
                ])
            })
            .collect()
    };
    let before = diffs(&t);
    let r = t.json(&["defrag", "--format", "json", "vol"]);
    assert_eq!(diffs(&t), before, "a pass changes no diff");
    assert_eq!(r["objects_rewritten"], 2, "{r}");
    assert_eq!(r["bytes_rewritten"], 8 * M, "{r}");
    assert_eq!(r["reads_after"], 2, "{r}");
    assert!(r["reads_before"].as_u64().expect("n") > 2, "{r}");
    assert_eq!(t.export("vol"), want);
    for (name, content) in &snaps {
        assert!(t.export(name) == *content, "{name} changed");
    }
    let again = t.ok_str(&["defrag", "vol"]);
    assert!(
        again.starts_with("rewrote 0 of 2 candidate objects"),
        "{again}"
    );
    let e = t.fails(&["defrag", "--min-reads", "1", "vol"], 22);
    assert!(e.contains("--min-reads must be at least 2"), "{e}");
    let e = t.fails(&["defrag", "--bytes-per-sec", "fast", "vol"], 22);
    assert!(e.contains("invalid size value"), "{e}");
    t.fails(&["defrag", "vol@s0"], 22);
    t.fails(&["defrag", "nosuch"], 2);
}

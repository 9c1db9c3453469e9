//! rbd parity that backup scripts rely on (issue 10), on the local store:
//! rbd's create options on `create` and `import`, sparse `export`, refusing
//! a from-snapshot newer than the end point, and `bench-write`.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

impl T {
    fn images(&self) -> Vec<String> {
        self.ok_str(&["ls"]).lines().map(str::to_string).collect()
    }
    fn object_size(&self, spec: &str) -> u64 {
        self.json(&["info", "--format", "json", spec])["object_size"]
            .as_u64()
            .expect("object_size")
    }
    fn export(&self, spec: &str) -> Vec<u8> {
        self.ok(&["export", spec, "-"])
    }
    /// Writes `data` at `offset` of `spec` (size `size`) through a v1 diff.
    fn write(&self, spec: &str, size: u64, offset: u64, data: &[u8], to: Option<&str>) {
        let mut w =
            rbd_streams::DiffWriter::new(Vec::new(), rbd_streams::DiffFormat::V1).expect("writer");
        if let Some(t) = to {
            w.to_snap(t).expect("to");
        }
        w.size(size).expect("size");
        w.data(offset, data).expect("data");
        let f = self.file("w.diff");
        std::fs::write(&f, w.finish().expect("finish")).expect("write");
        self.ok(&["import-diff", s(&f), spec]);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut r = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..n).map(|_| r.gen()).collect()
}

/// Bytes the file occupies on disk.
fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").blocks() * 512
}

const M: u64 = 1 << 20;
const K: u64 = 1 << 10;

/// Item 1: `import` takes rbd's create options with rbd's semantics.
#[test]
fn import_takes_rbds_create_options() {
    let t = T::new();
    let data = random((2 * M) as usize, 1);
    let raw = t.file("raw");
    std::fs::write(&raw, &data).expect("write");
    let raw = s(&raw);

    // --order sets the object size (and is deprecated, as rbd says).
    let o = run(local(&t.store()), &["import", "--order", "20", raw, "a"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--order is deprecated, use --object-size"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(t.object_size("a"), M);
    assert_eq!(t.export("a"), data);

    // Everything a script would pass for a plain format-2 image.
    t.ok(&[
        "import",
        "--image-format",
        "2",
        "--object-size",
        "1M",
        "--image-feature",
        "layering",
        "--image-feature",
        "exclusive-lock,object-map,fast-diff,deep-flatten",
        "--stripe-unit",
        "1M",
        "--stripe-count",
        "1",
        "--sparse-size",
        "64K",
        raw,
        "b",
    ]);
    assert_eq!(t.object_size("b"), M);
    assert_eq!(t.export("b"), data);
    t.ok(&["import", "--new-format", raw, "c"]);
    assert_eq!(t.export("c"), data);
    // rbd rounds --object-size to the nearest power of two (order =
    // round(log2(size))); --order wins over --object-size.
    t.ok(&["import", "--object-size", "3M", raw, "d"]);
    assert_eq!(t.object_size("d"), 4 * M);
    t.ok(&["import", "--order", "21", "--object-size", "8M", raw, "e"]);
    assert_eq!(t.object_size("e"), 2 * M);
    // --sparse-size 0: every byte written, same contents.
    t.ok(&["import", "--sparse-size", "0", raw, "f"]);
    assert_eq!(t.export("f"), data);

    // Still as before: all-zero blocks are not written (an all-zero file
    // imports with nothing allocated), a directory is refused.
    let zeros = t.file("zeros");
    std::fs::write(&zeros, vec![0u8; (3 * M) as usize]).expect("write");
    t.ok(&["import", s(&zeros), "z"]);
    let du = t.json(&["du", "--format", "json", "z"]);
    assert_eq!(du["images"][0]["provisioned_size"], 3 * M);
    assert_eq!(du["images"][0]["used_size"], 0, "{du}");
    assert_eq!(t.export("z"), vec![0u8; (3 * M) as usize]);
    let e = t.fails(&["import", s(t.dir.path()), "dir"], 21);
    assert!(e.contains("(21) Is a directory"), "{e}");

    // Refused, as rbd refuses them, and nothing is left behind.
    let before = t.images();
    for (args, code, text) in [
        (
            &["--image-feature", "bogus"][..],
            1,
            "the argument for option '--image-feature' is invalid",
        ),
        (
            &["--image-feature", "layering,bogus"][..],
            1,
            "the argument for option '--image-feature' is invalid",
        ),
        (
            &["--order", "11"][..],
            1,
            "the argument for option '--order' is invalid",
        ),
        (
            &["--order", "x"][..],
            1,
            "the argument for option '--order' is invalid",
        ),
        (
            &["--image-format", "3"][..],
            1,
            "the argument for option '--image-format' is invalid",
        ),
        (
            &["--object-size", "abc"][..],
            1,
            "the argument for option '--object-size' is invalid",
        ),
        (
            &["--stripe-count", "x"][..],
            1,
            "the argument ('x') for option '--stripe-count' is invalid",
        ),
        (
            &["--sparse-size", "x"][..],
            1,
            "the argument for option '--sparse-size' is invalid",
        ),
        // What rbd-row cannot honour: a clear refusal.
        (&["--image-format", "1"][..], 95, "image format 1"),
        (
            &["--image-format", "1", "--image-feature", "layering"][..],
            22,
            "features not allowed with format 1; use --image-format 2",
        ),
        (
            &["--stripe-unit", "64K", "--stripe-count", "2"][..],
            95,
            "striping",
        ),
        (
            &["--stripe-unit", "64K"][..],
            22,
            "must specify both (or neither) of stripe-unit and stripe-count",
        ),
        (&["--image-feature", "journaling"][..], 95, "journaling"),
        (&["--image-shared"][..], 95, "shared"),
        (&["--data-pool", "fast"][..], 95, "data pool"),
        (&["--object-size", "4K"][..], 22, "object size"),
    ] {
        let mut a = vec!["import"];
        a.extend_from_slice(args);
        a.extend_from_slice(&[raw, "refused"]);
        let e = t.fails(&a, code);
        assert!(e.contains(text), "{args:?}: {e}");
        assert_eq!(t.images(), before, "{args:?} left an image behind");
    }
}

/// Item 2: `create` takes rbd's format and striping options when they mean
/// what rbd-row does (format 2, no fancy striping) and refuses the rest.
#[test]
fn create_takes_format_2_and_plain_striping() {
    let t = T::new();
    t.ok(&["create", "--size", "4M", "--image-format", "2", "a"]);
    t.ok(&[
        "create",
        "--size",
        "4M",
        "--object-size",
        "1M",
        "--stripe-unit",
        "1M",
        "--stripe-count",
        "1",
        "b",
    ]);
    assert_eq!(t.object_size("b"), M);
    // Default object size (4M): stripe unit = object size, any count, or
    // stripe count 1 with a stripe unit dividing the object size, lay data
    // out exactly as without striping (rbd calls both "default striping").
    t.ok(&[
        "create",
        "--size",
        "4M",
        "--stripe-unit",
        "4M",
        "--stripe-count",
        "1",
        "c",
    ]);
    t.ok(&[
        "create",
        "--size",
        "4M",
        "--stripe-unit",
        "64K",
        "--stripe-count",
        "1",
        "d",
    ]);
    t.ok(&[
        "create",
        "--size",
        "4M",
        "--image-feature",
        "layering,exclusive-lock,object-map,fast-diff,deep-flatten",
        "e",
    ]);
    t.ok(&["create", "--size", "4M", "--order", "22", "f"]);
    assert_eq!(t.object_size("f"), 4 * M);
    let before = t.images();
    for (args, code, text) in [
        (&["--image-format", "1"][..], 95, "image format 1"),
        (
            &["--image-format", "3"][..],
            1,
            "the argument for option '--image-format' is invalid",
        ),
        (
            &[
                "--image-format",
                "1",
                "--stripe-unit",
                "64K",
                "--stripe-count",
                "2",
            ][..],
            22,
            "non-default striping not allowed with format 1",
        ),
        (
            &["--stripe-unit", "64K", "--stripe-count", "2"][..],
            95,
            "striping",
        ),
        (
            &[
                "--object-size",
                "1M",
                "--stripe-unit",
                "4M",
                "--stripe-count",
                "1",
            ][..],
            22,
            "stripe unit is not a factor of the object size",
        ),
        (
            &["--stripe-unit", "3000", "--stripe-count", "1"][..],
            22,
            "stripe unit is not a factor of the object size",
        ),
        (
            &["--stripe-unit", "256", "--stripe-count", "1"][..],
            22,
            "stripe unit must be at least 512 bytes",
        ),
        (
            &["--stripe-count", "2"][..],
            22,
            "must specify both (or neither) of stripe-unit and stripe-count",
        ),
        (
            &["--image-feature", "nosuch"][..],
            1,
            "the argument for option '--image-feature' is invalid",
        ),
        (
            &["--order", "26"][..],
            1,
            "the argument for option '--order' is invalid",
        ),
    ] {
        let mut a = vec!["create", "--size", "4M"];
        a.extend_from_slice(args);
        a.push("refused");
        let e = t.fails(&a, code);
        assert!(e.contains(text), "{args:?}: {e}");
        assert_eq!(t.images(), before, "{args:?} created an image");
    }
}

/// Item 3: a raw export to a file is sparse at 4 KiB (holes where the
/// image reads zeros), has the image's exact length and contents; stdout
/// gets every byte.
#[test]
fn export_to_a_file_is_sparse() {
    let t = T::new();
    let size = 10 * M + 1000;
    t.ok(&["create", "--size", &format!("{size}B"), "img"]);
    let mut want = vec![0u8; size as usize];
    // 1 MiB of data inside the first 4 MiB object, with a zero gap inside.
    let mut d = random(M as usize, 2);
    d[(256 * K) as usize..(512 * K) as usize].fill(0);
    let at = 2 * M + 512 * K;
    t.write("img", size, at, &d, None);
    want[at as usize..(at + M) as usize].copy_from_slice(&d);
    // A small write straddling two 4 KiB blocks, far away.
    let small = random(100, 3);
    let at2 = 9 * M + 4090;
    t.write("img", size, at2, &small, None);
    want[at2 as usize..at2 as usize + 100].copy_from_slice(&small);
    let data_bytes = (M - 256 * K) + 8 * K;

    let out = t.file("out.raw");
    t.ok(&["export", "img", s(&out)]);
    let got = std::fs::read(&out).expect("read");
    assert_eq!(got.len() as u64, size, "length set like ftruncate");
    assert!(got == want, "contents differ");
    let alloc = allocated(&out);
    assert!(
        alloc <= data_bytes + 64 * K,
        "export allocated {alloc} bytes for {data_bytes} bytes of data"
    );
    assert!(alloc >= data_bytes, "allocated {alloc} < {data_bytes}");
    // stdout gets every byte, holes included.
    assert!(t.export("img") == want);
    // A trailing zero tail and an all-zero image: right length, no data.
    t.ok(&["create", "--size", "3M", "empty"]);
    let e = t.file("empty.raw");
    t.ok(&["export", "empty", s(&e)]);
    assert_eq!(std::fs::metadata(&e).expect("stat").len(), 3 * M);
    assert!(allocated(&e) <= 64 * K, "{}", allocated(&e));
    // A snapshot exports sparse too.
    t.ok(&["snap", "create", "img@s"]);
    let snap_out = t.file("snap.raw");
    t.ok(&["export", "img@s", s(&snap_out)]);
    assert!(std::fs::read(&snap_out).expect("read") == want);
    assert!(allocated(&snap_out) <= data_bytes + 64 * K);
    // --sparse-size 0 writes every byte (rbd import's meaning of 0).
    let full = t.file("full.raw");
    t.ok(&["export", "--sparse-size", "0", "img", s(&full)]);
    assert!(std::fs::read(&full).expect("read") == want);
    assert!(allocated(&full) >= size - 64 * K, "{}", allocated(&full));
    // Coarser holes: 1 MiB blocks (the data spans three of them).
    let coarse = t.file("coarse.raw");
    t.ok(&["export", "--sparse-size", "1M", "img", s(&coarse)]);
    assert!(std::fs::read(&coarse).expect("read") == want);
    assert!(
        allocated(&coarse) <= 3 * M + 64 * K,
        "{}",
        allocated(&coarse)
    );
    assert!(allocated(&coarse) >= 3 * M, "{}", allocated(&coarse));
    t.fails(
        &["export", "--sparse-size", "64M", "img", s(&t.file("x"))],
        22,
    );
    t.fails(&["export", "--sparse-size", "x", "img", s(&t.file("x"))], 1);
    assert!(!t.file("x").exists());
}

/// Item 4: `export-diff IMG@older --from-snap newer` is refused as rbd
/// refuses it (EINVAL from diff_iterate), with no output left behind.
#[test]
fn export_diff_from_a_newer_snapshot_is_refused() {
    let t = T::new();
    t.ok(&["create", "--size", "2M", "img"]);
    t.write("img", 2 * M, 0, &random(8192, 4), Some("one"));
    t.write("img", 2 * M, M, &random(8192, 5), Some("two"));
    t.write("img", 2 * M, 4096, &random(100, 6), None);
    let out = t.file("bad.diff");
    let e = t.fails(
        &["export-diff", "--from-snap", "two", "img@one", s(&out)],
        22,
    );
    assert!(
        e.contains("rbd-row: export-diff error: (22) Invalid argument"),
        "{e}"
    );
    assert!(e.contains("newer"), "{e}");
    assert!(!out.exists(), "output file left behind");
    // Not to stdout either: nothing written.
    let o = run(
        local(&t.store()),
        &["export-diff", "--from-snap", "two", "img@one", "-"],
    );
    assert_eq!(o.status.code(), Some(22));
    assert!(o.stdout.is_empty(), "{} bytes on stdout", o.stdout.len());
    // rbd diff refuses the same.
    let e = t.fails(&["diff", "--from-snap", "two", "img@one"], 22);
    assert!(e.contains("diff error: (22) Invalid argument"), "{e}");
    // A bookmark of the newer snapshot is just as newer.
    t.ok(&["bookmark", "create", "img@two", "b2"]);
    t.fails(
        &["export-diff", "--from-snap", "b2", "img@one", s(&out)],
        22,
    );
    assert!(!out.exists());
    // An existing output file is not removed by a refused export-diff.
    std::fs::write(&out, b"keep me").expect("write");
    t.fails(
        &["export-diff", "--from-snap", "two", "img@one", s(&out)],
        22,
    );
    assert_eq!(std::fs::read(&out).expect("read"), b"keep me");
    std::fs::remove_file(&out).expect("rm");
    // The right direction, the same snapshot (an empty diff, as rbd) and
    // the head still work.
    t.ok(&["export-diff", "--from-snap", "one", "img@two", s(&out)]);
    t.ok(&["export-diff", "--from-snap", "one", "img@one", "-"]);
    t.ok(&["export-diff", "--from-snap", "two", "img", "-"]);
    t.ok(&["export-diff", "--from-snap", "b2", "img", "-"]);
    t.ok(&["diff", "--from-snap", "one", "img@two"]);
}

/// Item 5: `bench-write`, rbd's deprecated alias of `bench --io-type write`.
#[test]
fn bench_write_is_bench_io_type_write() {
    let t = T::new();
    t.ok(&["create", "--size", "4M", "img"]);
    let o = run(
        local(&t.store()),
        &[
            "bench-write",
            "--io-size",
            "4K",
            "--io-threads",
            "2",
            "--io-total",
            "64K",
            "--io-pattern",
            "rand",
            "img",
        ],
    );
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(
        out.starts_with("bench  type write io_size 4096 io_threads 2 bytes 65536 pattern random"),
        "{out}"
    );
    assert!(out.contains("ops: 16 "), "{out}");
    assert!(err.contains("bench-write is deprecated"), "{err}");
    assert!(t.export("img").iter().any(|&b| b != 0), "nothing written");
    // Defaults as rbd's (seq, 4K, 16 threads) with a small total.
    let out = t.ok_str(&["bench-write", "--io-total", "128K", "img"]);
    assert!(out.contains("pattern sequential"), "{out}");
    assert!(out.contains("ops: 32 "), "{out}");
    // rbd's third pattern.
    let out = t.ok_str(&[
        "bench-write",
        "--io-total",
        "64K",
        "--io-pattern",
        "full-seq",
        "img",
    ]);
    assert!(out.contains("pattern full sequential"), "{out}");
    assert!(out.contains("ops: 16 "), "{out}");
    // rbd's bench-write has no --io-type.
    t.fails(&["bench-write", "--io-type", "read", "img"], 22);
    assert!(ok_str(rbd_row(), &["bench-write", "--help"]).contains("Example:"));
}

/// Like rbd (which opens its output with O_EXCL), export, export-diff and
/// merge-diff refuse an existing output file (EEXIST) and leave it as it was.
#[test]
fn existing_output_files_are_kept() {
    let t = T::new();
    t.ok(&["create", "--size", "1M", "img"]);
    t.write("img", M, 0, &random(8192, 7), Some("s1"));
    t.write("img", M, 8192, &random(8192, 8), None);
    let (d1, d2) = (t.file("d1.diff"), t.file("d2.diff"));
    t.ok(&["export-diff", "img@s1", s(&d1)]);
    t.ok(&["export-diff", "--from-snap", "s1", "img", s(&d2)]);
    let out = t.file("precious");
    std::fs::write(&out, b"keep me").expect("write");
    for (args, text) in [
        (
            vec!["export", "img", s(&out)],
            "rbd-row: export error: (17) File exists",
        ),
        (
            vec!["export", "--export-format", "2", "img", s(&out)],
            "rbd-row: export error: (17) File exists",
        ),
        (
            vec!["export-diff", "img", s(&out)],
            "rbd-row: export-diff error: (17) File exists",
        ),
        (
            vec!["merge-diff", s(&d1), s(&d2), s(&out)],
            "(17) File exists",
        ),
    ] {
        let e = t.fails(&args, 17);
        assert!(e.contains(text), "{args:?}: {e}");
        assert_eq!(
            std::fs::read(&out).expect("read"),
            b"keep me",
            "{args:?} changed an existing file"
        );
    }
    // A failed export to a new path leaves nothing behind.
    let new = t.file("new.raw");
    t.fails(&["export", "img@nosuch", s(&new)], 2);
    assert!(!new.exists());
    // And to a fresh path they all work.
    t.ok(&["merge-diff", s(&d1), s(&d2), s(&t.file("m.diff"))]);
    t.ok(&["export", "img", s(&new)]);
    assert_eq!(std::fs::read(&new).expect("read"), t.export("img"));
}

/// `clone` takes rbd's clone creation options the same way: a clone keeps
/// its parent's layout, so only values meaning that layout are accepted.
#[test]
fn clone_takes_rbds_create_options() {
    let t = T::new();
    t.ok(&["create", "--size", "2M", "--object-size", "1M", "base"]);
    t.write("base", 2 * M, 100, &random(5000, 9), Some("gold"));
    t.ok(&["snap", "protect", "base@gold"]);
    t.ok(&[
        "clone",
        "--image-feature",
        "layering,exclusive-lock,object-map,fast-diff,deep-flatten",
        "--object-size",
        "1M",
        "--stripe-unit",
        "1M",
        "--stripe-count",
        "1",
        "base@gold",
        "vm1",
    ]);
    assert_eq!(t.export("vm1"), t.export("base@gold"));
    t.ok(&["clone", "--order", "20", "base@gold", "vm2"]);
    let before = t.images();
    for (args, code, text) in [
        (
            &["--image-feature", "bogus"][..],
            1,
            "the argument for option '--image-feature' is invalid",
        ),
        (&["--object-size", "4M"][..], 95, "object size"),
        (
            &["--stripe-unit", "64K", "--stripe-count", "4"][..],
            95,
            "striping",
        ),
        (&["--image-feature", "journaling"][..], 95, "journaling"),
    ] {
        let mut a = vec!["clone"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["base@gold", "refused"]);
        let e = t.fails(&a, code);
        assert!(e.contains(text), "{args:?}: {e}");
        assert_eq!(t.images(), before, "{args:?} created an image");
    }
    // rbd's clone has no --image-format.
    t.fails(&["clone", "--image-format", "2", "base@gold", "x"], 22);
}

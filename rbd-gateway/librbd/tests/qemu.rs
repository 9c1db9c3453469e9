//! QEMU 7.2's rbd block driver as a librbd client of this library. The
//! machine's qemu-img (10.x) has no rbd module, so Debian bookworm's
//! `qemu-utils` and `qemu-block-extra` 7.2 (one version for both) are
//! fetched with `apt-get download` and unpacked with `dpkg -x` into a cache
//! directory (`$RBD_ROW_QEMU72_DIR`, default /tmp/rbd-row-qemu72), which
//! changes nothing on the system; `QEMU_MODULE_DIR` points qemu-img at the
//! unpacked block-rbd.so, which loads librbd.so.1 from `LD_LIBRARY_PATH`.
//!
//! `qemu-img create` makes a ROW image (`RBD_ROW_CREATE=1`) and a native
//! one; on both (the native one through the pass-through): `qemu-img convert`
//! writes a sparse raw file, `compare` finds it identical, `map` reports the
//! same data extents for both (QEMU asks `rbd_diff_iterate2`), `snapshot`
//! creates and lists, and a `qemu-io` write makes `compare` differ.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The newest 7.2 version apt offers for `pkg`s.
fn version_72() -> String {
    let out = common::run_ok(Command::new("apt-cache").args([
        "madison",
        "qemu-utils",
        "qemu-block-extra",
    ]));
    let of = |pkg: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.split('|').next().is_some_and(|p| p.trim() == pkg))
            .filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string()))
            .filter(|v| v.starts_with("1:7.2"))
            .collect()
    };
    let extra = of("qemu-block-extra");
    of("qemu-utils")
        .into_iter()
        .find(|v| extra.contains(v))
        .unwrap_or_else(|| {
            panic!("apt offers no qemu-utils and qemu-block-extra 7.2 of one version:\n{out}")
        })
}

/// The unpacked QEMU 7.2 root (fetched once).
fn qemu72() -> PathBuf {
    let root = PathBuf::from(
        std::env::var("RBD_ROW_QEMU72_DIR").unwrap_or_else(|_| "/tmp/rbd-row-qemu72".into()),
    );
    if root.join("usr/bin/qemu-img").exists()
        && root
            .join("usr/lib/x86_64-linux-gnu/qemu/block-rbd.so")
            .exists()
    {
        return root;
    }
    let v = version_72();
    let debs = tempfile::tempdir().expect("tempdir");
    common::run_ok(
        Command::new("apt-get")
            .args([
                "download",
                &format!("qemu-utils={v}"),
                &format!("qemu-block-extra={v}"),
            ])
            .current_dir(debs.path()),
    );
    std::fs::create_dir_all(&root).expect("mkdir");
    for deb in std::fs::read_dir(debs.path()).expect("debs") {
        common::run_ok(
            Command::new("dpkg")
                .arg("-x")
                .arg(deb.expect("deb").path())
                .arg(&root),
        );
    }
    root
}

struct Qemu {
    root: PathBuf,
    lib: PathBuf,
}

impl Qemu {
    fn cmd(&self, bin: &str) -> Command {
        let mut c = Command::new(self.root.join("usr/bin").join(bin));
        c.env(
            "QEMU_MODULE_DIR",
            self.root.join("usr/lib/x86_64-linux-gnu/qemu"),
        )
        .env("LD_LIBRARY_PATH", &self.lib)
        .env("CEPH_CONF", common::ceph_conf());
        c
    }
}

fn spec(image: &str) -> String {
    format!("rbd:rbd/{image}:conf={}", common::ceph_conf())
}

/// The data extents of `qemu-img map --output=json`.
fn data_extents(q: &Qemu, image: &str) -> Vec<(u64, u64)> {
    let out =
        common::run_ok(
            q.cmd("qemu-img")
                .args(["map", "-f", "raw", "--output=json", &spec(image)]),
        );
    let num = |l: &str, k: &str| -> u64 {
        let i = l.find(&format!("\"{k}\": ")).expect(k) + k.len() + 4;
        l[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .expect("digits")
            .parse()
            .expect("number")
    };
    out.lines()
        .filter(|l| l.contains("\"data\": true"))
        .map(|l| (num(l, "start"), num(l, "length")))
        .collect()
}

fn write_source(path: &Path) {
    let mut data = vec![0u8; 64 << 20];
    for (i, b) in data[..4 << 20].iter_mut().enumerate() {
        *b = (i * 7 + i / 4096) as u8 | 1;
    }
    for (i, b) in data[20 << 20..21 << 20].iter_mut().enumerate() {
        *b = (i * 13) as u8 | 1;
    }
    std::fs::write(path, data).expect("write source");
}

#[test]
#[ignore = "needs CEPH_CONF (run by tests/run-all.sh)"]
fn qemu_7_2_rbd_driver_on_row_and_native_images() {
    common::ceph_conf();
    let lib = common::lib_dir();
    let q = Qemu {
        root: qemu72(),
        lib: lib.path().to_path_buf(),
    };
    let v = common::run_ok(q.cmd("qemu-img").arg("--version"));
    assert!(v.contains("version 7.2"), "{v}");

    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src.raw");
    write_source(&src);
    let rbdtool = common::compile("rbdtool", work.path());
    // qemu-img create makes the images through rbd_create: a ROW image
    // with RBD_ROW_CREATE=1, a native one without.
    let row = common::unique("qrow");
    common::run_ok(
        q.cmd("qemu-img")
            .args(["create", "-f", "raw", &spec(&row), "64M"])
            .env("RBD_ROW_CREATE", "1"),
    );
    let native = common::unique("qnat");
    common::run_ok(
        q.cmd("qemu-img")
            .args(["create", "-f", "raw", &spec(&native), "64M"]),
    );
    let info = |image: &str| {
        Command::new("rbd")
            .args(["info", &format!("rbd/{image}")])
            .output()
            .expect("rbd info")
    };
    assert!(
        !info(&row).status.success(),
        "the real rbd tool sees {row}: not a ROW image"
    );
    assert!(
        info(&native).status.success(),
        "{native} is not a native image"
    );

    let mut maps = Vec::new();
    for image in [&row, &native] {
        let s = spec(image);
        common::run_ok(
            q.cmd("qemu-img")
                .args(["convert", "-n", "-f", "raw", "-O", "raw"])
                .arg(&src)
                .arg(&s),
        );
        let out = common::run_ok(
            q.cmd("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(&src)
                .arg(&s),
        );
        assert!(out.contains("identical"), "{image}: {out}");
        maps.push(data_extents(&q, image));
        common::run_ok(q.cmd("qemu-img").args(["snapshot", "-c", "before", &s]));
        let l = common::run_ok(q.cmd("qemu-img").args(["snapshot", "-l", &s]));
        assert!(l.contains("before"), "{image}: {l}");
        common::run_ok(
            q.cmd("qemu-io")
                .args(["-f", "raw", "-c", "write -P 0x5a 1M 64k", &s]),
        );
        let differs = q
            .cmd("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(&s)
            .output()
            .expect("compare");
        assert_eq!(
            differs.status.code(),
            Some(1),
            "{image}: compare after a write"
        );
    }
    assert!(
        maps[0].iter().any(|&(s, _)| s == 0),
        "no data at 0: {:?}",
        maps[0]
    );
    assert!(
        maps[0]
            .iter()
            .any(|&(s, l)| s <= 20 << 20 && 21 << 20 <= s + l),
        "{:?}",
        maps[0]
    );
    assert_eq!(maps[0], maps[1], "qemu-img map: ROW vs native");

    for image in [&row, &native] {
        for args in [
            vec!["unsnap", "rbd", image, "before"],
            vec!["remove", "rbd", image],
        ] {
            common::run_ok(
                Command::new(&rbdtool)
                    .args(&args)
                    .env("CEPH_CONF", common::ceph_conf())
                    .env("LD_LIBRARY_PATH", lib.path()),
            );
        }
    }
}

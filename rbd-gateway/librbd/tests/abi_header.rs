//! The exported C functions against Ceph 16.2's `rbd/librbd.h` (Debian's
//! librbd-dev): every `extern "C"` function of `src/` is redeclared in C
//! with the signature its Rust declaration has, after including the real
//! header, and compiled with `-Werror`: a type that differs from the
//! header's is a "conflicting types" error. Also: the library's soname, and
//! that every librbd function fio's rbd engine (linked with BIND_NOW) and
//! QEMU 7.2's block-rbd module import is exported.
//!
//! No cluster needed.

mod common;

use std::path::Path;
use std::process::Command;

/// Rust type (as written in src/) to C type.
fn c_type(t: &str) -> String {
    let t = t.trim();
    let base = |b: &str| -> &str {
        match b {
            "c_void" => "void",
            "c_char" => "char",
            "c_int" => "int",
            "u8" => "uint8_t",
            "u32" => "uint32_t",
            "u64" => "uint64_t",
            "i64" => "int64_t",
            "usize" => "size_t",
            "isize" => "ssize_t",
            "bool" => "bool",
            "libc::iovec" => "struct iovec",
            "libc::timespec" => "struct timespec",
            "RbdImageInfo" => "rbd_image_info_t",
            "RbdImageSpec" => "rbd_image_spec_t",
            "RbdSnapInfo" => "rbd_snap_info_t",
            "RbdCallback" => "rbd_callback_t",
            "ProgressFn" => "librbd_progress_fn_t",
            "DiffCb" => "diff_cb_t",
            "EncryptionFormat" => "rbd_encryption_format_t",
            other => panic!("no C type for Rust type {other:?}: extend abi_header.rs"),
        }
    };
    if let Some(rest) = t.strip_prefix("*mut ") {
        return format!("{} *", c_type(rest));
    }
    if let Some(rest) = t.strip_prefix("*const ") {
        return format!("const {} *", c_type(rest));
    }
    base(t).to_string()
}

/// (name, C return type, C parameter types) of every exported function.
fn exported() -> Vec<(String, String, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&src).expect("src dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("pub unsafe extern \"C\" fn ") {
            rest = &rest[i + "pub unsafe extern \"C\" fn ".len()..];
            let open = rest.find('(').expect("(");
            let name = rest[..open].trim().to_string();
            let close = rest.find(')').expect(")");
            let params: Vec<String> = rest[open + 1..close]
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| c_type(p.split_once(':').expect("name: type").1))
                .collect();
            let after = &rest[close + 1..rest.find('{').expect("{")];
            let ret = match after.trim().strip_prefix("->") {
                Some(r) => c_type(r),
                None => "void".into(),
            };
            out.push((name, ret, params));
        }
    }
    out.sort();
    out
}

#[test]
fn signatures_match_the_installed_header() {
    let fns = exported();
    assert!(
        fns.len() >= 50,
        "found only {} exported functions",
        fns.len()
    );
    let mut c = String::from(
        "#include <rbd/librbd.h>\n#include <sys/types.h>\n\
         typedef int (*diff_cb_t)(uint64_t, size_t, int, void *);\n",
    );
    for (name, ret, params) in &fns {
        let p = if params.is_empty() {
            "void".to_string()
        } else {
            params.join(", ")
        };
        c.push_str(&format!("{ret} {name}({p});\n"));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("redeclare.c");
    std::fs::write(&file, &c).expect("write");
    let o = Command::new("cc")
        .args(["-fsyntax-only", "-Werror", "-Wno-deprecated-declarations"])
        .arg(&file)
        .output()
        .expect("cc");
    assert!(
        o.status.success(),
        "redeclarations conflict with rbd/librbd.h:\n{}\n{c}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A wrong redeclaration must fail, or the check proves nothing.
    std::fs::write(
        &file,
        "#include <rbd/librbd.h>\nint rbd_read(void *, uint64_t, size_t, char *);\n",
    )
    .expect("write");
    let bad = Command::new("cc")
        .args(["-fsyntax-only"])
        .arg(&file)
        .output()
        .expect("cc");
    assert!(
        !bad.status.success(),
        "a conflicting redeclaration compiled"
    );
}

fn defined_symbols() -> Vec<String> {
    let out = common::run_ok(
        Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(common::built_so()),
    );
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("rbd_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn soname_is_librbd_so_1() {
    let out = common::run_ok(Command::new("readelf").arg("-d").arg(common::built_so()));
    assert!(out.contains("Library soname: [librbd.so.1]"), "{out}");
}

/// QEMU 7.2's block-rbd.so imports (`nm -D` of Debian bookworm's
/// qemu-block-extra 1:7.2+dfsg-7+deb12u18).
const QEMU_7_2: &[&str] = &[
    "rbd_aio_create_completion",
    "rbd_aio_discard",
    "rbd_aio_flush",
    "rbd_aio_get_return_value",
    "rbd_aio_readv",
    "rbd_aio_release",
    "rbd_aio_write_zeroes",
    "rbd_aio_writev",
    "rbd_close",
    "rbd_create",
    "rbd_diff_iterate2",
    "rbd_encryption_format",
    "rbd_encryption_load",
    "rbd_get_features",
    "rbd_get_flags",
    "rbd_get_parent_info",
    "rbd_get_size",
    "rbd_invalidate_cache",
    "rbd_namespace_exists",
    "rbd_open",
    "rbd_read",
    "rbd_remove",
    "rbd_resize",
    "rbd_snap_create",
    "rbd_snap_list",
    "rbd_snap_list_end",
    "rbd_snap_remove",
    "rbd_snap_rollback",
    "rbd_stat",
];

/// Named in issue 8 beyond fio's and QEMU's imports.
const EXTRA: &[&str] = &[
    "rbd_write",
    "rbd_aio_is_complete",
    "rbd_aio_wait_for_complete",
    "rbd_open_read_only",
    "rbd_snap_set",
    "rbd_list2",
    "rbd_version",
    "rbd_aio_get_arg",
    "rbd_set_image_notification",
    "rbd_poll_io_events",
    "rbd_flush",
    "rbd_aio_read",
    "rbd_aio_write",
];

#[test]
fn fio_qemu_and_issue_functions_are_exported() {
    let have = defined_symbols();
    let fio = common::run_ok(Command::new("nm").args(["-D", "/usr/bin/fio"]));
    let fio_needs: Vec<&str> = fio
        .lines()
        .filter_map(|l| l.trim().strip_prefix("U "))
        .filter(|s| s.starts_with("rbd_"))
        .collect();
    assert!(fio_needs.len() >= 15, "fio imports only {fio_needs:?}");
    let missing: Vec<&&str> = fio_needs
        .iter()
        .chain(QEMU_7_2)
        .chain(EXTRA)
        .filter(|s| !have.iter().any(|h| h == *s))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
}

/// Every C function of the system librbd exists here too (implemented or
/// forwarded), so no librbd C client fails to load.
#[test]
fn every_system_librbd_c_function_is_exported() {
    let have = defined_symbols();
    let sys = common::run_ok(Command::new("nm").args([
        "-D",
        "--defined-only",
        "/usr/lib/x86_64-linux-gnu/librbd.so.1",
    ]));
    let missing: Vec<&str> = sys
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("rbd_"))
        .filter(|s| !have.iter().any(|h| h == s))
        .collect();
    assert!(
        missing.is_empty(),
        "system librbd functions missing here: {missing:?}"
    );
}

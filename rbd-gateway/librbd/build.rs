//! Gives the shared library librbd's soname, so that programs linked
//! against `librbd.so.1` load it from `LD_LIBRARY_PATH`, and generates one
//! forwarding trampoline per line of `src/forwarded.list` (the librbd C
//! functions this library does not implement itself; see `src/forward.rs`).

use std::fmt::Write as _;

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librbd.so.1");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/forwarded.list");
    let list = std::fs::read_to_string("src/forwarded.list").expect("src/forwarded.list");
    let mut table = String::new();
    let mut fns = String::new();
    let mut n = 0usize;
    for line in list
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (name, kind) = line.split_once(' ').expect("'name kind' lines");
        let kind = match kind.trim() {
            "pass" => "Kind::Pass",
            "image" => "Kind::Image",
            "image2" => "Kind::Image2",
            "refuse" => "Kind::Refuse",
            k => panic!("src/forwarded.list: unknown kind {k} of {name}"),
        };
        writeln!(table, "    (\"{name}\\0\", {kind}),").expect("write");
        writeln!(
            fns,
            "/// Forwards `{name}` (see `forward.rs`).\n///\n/// # Safety\n/// As librbd's `{name}`.\n\
             #[unsafe(naked)]\n#[no_mangle]\n\
             pub unsafe extern \"C\" fn {name}() {{\n    \
             core::arch::naked_asm!(\"mov eax, {{i}}\", \"jmp {{t}}\", i = const {n}, t = sym trampoline)\n}}\n"
        )
        .expect("write");
        n += 1;
    }
    let out = format!(
        "/// Forwarded functions: NUL-terminated name and kind.\n\
         pub(crate) static FORWARD: [(&str, Kind); {n}] = [\n{table}];\n\n{fns}"
    );
    let dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(format!("{dir}/forward_gen.rs"), out).expect("write forward_gen.rs");
}

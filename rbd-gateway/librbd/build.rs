//! Gives the shared library librbd's soname, so that programs linked
//! against `librbd.so.1` load it from `LD_LIBRARY_PATH`.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librbd.so.1");
    println!("cargo:rerun-if-changed=build.rs");
}

//! Links against the system librados (Debian: librados-dev / librados2).
//! `LIBRADOS_LIB_DIR` adds a search directory for a librados elsewhere.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBRADOS_LIB_DIR");
    if let Ok(dir) = std::env::var("LIBRADOS_LIB_DIR") {
        println!("cargo:rustc-link-search=native={dir}");
    }
    println!("cargo:rustc-link-lib=rados");
}

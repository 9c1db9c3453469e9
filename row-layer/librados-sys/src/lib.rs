//! Raw FFI bindings to librados, the C API of Ceph's RADOS object store.
//!
//! # Why our own bindings
//!
//! The published crates do not work for rbd-row on Ceph 16 (Pacific):
//!
//! * `ceph` 3.2.5 wraps only synchronous calls, its handles are not `Send`,
//!   it segfaulted in our trials, and it pulls in `nix` 0.18, which carries
//!   RUSTSEC-2021-0119;
//! * `librados-sys` 0.1.0 (crates.io) predates the calls we need: no
//!   `rados_aio_create_completion2`, no write/read operations with omap
//!   (`rados_write_op_omap_set2`, `rados_read_op_omap_get_vals2`), no
//!   `rados_watch2` / `rados_notify2`.
//!
//! This crate is nothing but `bindgen` output for `/usr/include/rados/librados.h`
//! (allowlisted to `rados_*` functions and types and `LIBRADOS_*` constants),
//! committed as `src/bindings.rs` so that building needs no libclang.
//! `regenerate.sh` holds the exact bindgen command line; rerun it after a
//! librados upgrade and review the diff. The safe, async layer lives in the
//! `row-rados` crate.
//!
//! Everything here is `unsafe` and follows librados.h's contracts verbatim.

#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]

include!("bindings.rs");

/// `LIBRADOS_SNAP_HEAD` (`((uint64_t)(-2))`), a macro bindgen cannot evaluate.
pub const LIBRADOS_SNAP_HEAD: u64 = u64::MAX - 1;
/// `LIBRADOS_SNAP_DIR` (`((uint64_t)(-1))`), a macro bindgen cannot evaluate.
pub const LIBRADOS_SNAP_DIR: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_reports_version() {
        let (mut major, mut minor, mut extra) = (0, 0, 0);
        // SAFETY: rados_version only writes the three ints it is given.
        unsafe { rados_version(&mut major, &mut minor, &mut extra) };
        assert_eq!(major as u32, LIBRADOS_VER_MAJOR);
        assert!(minor as u32 >= LIBRADOS_VER_MINOR);
    }
}

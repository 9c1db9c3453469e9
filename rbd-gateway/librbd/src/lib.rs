//! `librbd.so.1`: librbd's C ABI (Ceph 16.2's `rbd/librbd.h`) for
//! unmodified librbd clients (fio's rbd engine, QEMU's rbd driver, any
//! program written to `librbd.h`), serving ROW images with the row-layer
//! engine in the client's own process and forwarding every other image to
//! the system's real librbd.
//!
//! Put the directory holding this library's `librbd.so.1` first in
//! `LD_LIBRARY_PATH` and a client loads it instead of Ceph's. The engine
//! runs over the client's own `rados_ioctx_t` (its connection, pool and
//! namespace; [`row_rados::RadosBackend::over_ioctx`]) on this library's
//! tokio runtime ([`runtime`]). See docs/DESIGN.md §11.
//!
//! Modules, one job each:
//! * `runtime`: the runtime, and foreign threads waiting on it;
//! * `inline`: asynchronous requests driven by the threads that wake them;
//! * `native`: the system librbd (dlopen'ed by absolute path);
//! * `handle`: which `rbd_image_t` is which kind of image;
//! * `row_image`: an open ROW image; `pool`: a `rados_ioctx_t` as a store;
//! * `completion`, `events`: `rbd_completion_t`, and notification/polling;
//! * `ffi_pool`, `ffi_io`, `ffi_special` (write-same, compare-and-write),
//!   `ffi_image`, `ffi_snap`, `ffi_snap_info` (lookups by id), `ffi_diff`:
//!   the C functions, by area.

#![allow(unreachable_pub)]
#![warn(clippy::unwrap_used)]

pub mod completion;
pub mod errno;
pub mod events;
pub mod ffi_diff;
pub mod ffi_image;
pub mod ffi_io;
pub mod ffi_pool;
pub mod ffi_snap;
pub mod ffi_snap_info;
pub mod ffi_special;
pub mod forward;
pub mod handle;
pub mod inline;
pub mod native;
pub mod pool;
pub mod row_image;
pub mod runtime;

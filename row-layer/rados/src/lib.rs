//! row-rados: the RADOS backend of row-layer, on our own librados bindings.
//!
//! [`RadosCluster::connect`] opens a librados handle (honouring `CEPH_CONF`
//! and `CEPH_ARGS` as the Ceph tools do), [`RadosCluster::open_pool`] opens
//! a pool and namespace as a [`RadosBackend`], which implements
//! [`row_layer::backend::Backend`] and passes its conformance suite against a
//! real cluster (`tests/rados_conformance.rs`, cluster from
//! `tests/ceph/cluster.sh`).
//!
//! # Why our own bindings
//!
//! The published crates fail on Ceph 16 (Pacific): `ceph` 3.2.5 is
//! synchronous only, its handles are not `Send`, it segfaulted in our
//! trials, and it pulls in `nix` 0.18 (RUSTSEC-2021-0119); `librados-sys`
//! 0.1.0 on crates.io lacks the aio-completion, omap and watch/notify calls
//! we need. So `librados-sys` here is committed bindgen output for the
//! installed `librados.h`, and this crate is the small safe layer on top.
//!
//! # Design
//!
//! * Handles: the `rados_t` lives in an `Arc`, shut down after the last
//!   ioctx (each ioctx holds the Arc) and after the last in-flight operation
//!   (each holds its ioctx).
//! * Data path: reads, stats, omap reads and all mutations are librados aio
//!   operations whose completion callback only hands the boxed operation
//!   state back through a oneshot (see `aio`); nothing blocks a tokio
//!   worker, and dropping a future early is safe (the state, with its
//!   buffers, belongs to the callback until librados is done with it).
//! * Every [`row_layer::backend::WriteOp`] is one RADOS write operation
//!   (`rados_write_op_*` then `rados_aio_write_op_operate`): guards
//!   (`assert_exists`, exclusive `create`, `cmpxattr`, `assert_version`) and
//!   actions are applied atomically by the OSD, all or nothing.
//! * Calls librados offers only synchronously (xattr get, listing, locks,
//!   watch registration, notify, mon commands) run on tokio's blocking pool.
//! * Op timeout: each aio operation's wait is bounded (librados'
//!   `rados_osd_op_timeout` plus a margin; [`RadosBackend::with_op_timeout`]).
//!   A completion that never fires ends in a `Transient` error instead of a
//!   future that hangs forever. [`RadosCluster::connect`] sets
//!   `rados_osd_op_timeout` (default 0, wait forever) to
//!   [`DEFAULT_OSD_OP_TIMEOUT_SECS`] unless the caller chose a value.
//! * Watches survive errors: when librados reports a watch broken (e.g. the
//!   OSD timed it out while the process was stopped), the backend registers
//!   it again with backoff, under the same id, as librbd does; only a
//!   blocklisted client gives up (its event channel closes).
//! * Fencing (`osd blocklist add`) returns only once this client has the OSD
//!   map carrying the entry (`rados_wait_for_latest_osdmap`), so a lock broken
//!   afterwards cannot be raced by the fenced client's ops.
//! * Full pools: librados holds writes to a pool flagged full until it is
//!   not, or until the op timeout. The backend reads the flag from the
//!   monitors when a data write stalls, refuses data writes and omap
//!   updates while the pool is full (`NoSpace`), cancels those already
//!   waiting, and sends every other write (removals, header rewrites,
//!   locks, watches) full-try, so that the OSD applies it unless it grows
//!   the pool (see `pool_full`).
//! * Errors: negative errno to [`row_layer::ErrorKind`] by [`classify`];
//!   guard failures are reported as the guard that failed.
//!
//! Where RADOS differs from the contract, the write operation is adjusted
//! (an idempotent `create` before a compound `Remove` and before actions
//! RADOS refuses or ignores on a missing object), so that
//! `tests/rados_conformance.rs` finds the same results and final states as
//! the in-memory reference backend for every guard/action combination it
//! tries. One known difference remains, RADOS' `cmpxattr` behaviour: an
//! `XattrEquals` guard with an empty value also holds when the xattr is
//! absent (on an existing object); the conformance suite allows it by name
//! (`Allowances::xattr_equals_empty_matches_absent`).
//!
//! # Module layering
//!
//! Dependencies point one way, from the bottom up:
//!
//! * `error`: errno values, their [`row_layer::ErrorKind`] and error
//!   constructors; depends on nothing here;
//! * `cluster`: the `rados_t` and `rados_ioctx_t` handles, config, mon
//!   commands and fencing ([`RadosCluster`]); on `error`;
//! * `aio`: librados completions as futures, each owning its operation state
//!   and keeping its ioctx alive; on `cluster` and `error`;
//! * `pool_full`: the pool's full flag, refusing and cancelling writes for
//!   it; on `aio`, `cluster` and `error`;
//! * `watch`: watch/notify callbacks and the notify reply format; on `error`;
//! * `backend`: [`RadosBackend`], the [`row_layer::backend::Backend`]
//!   implementation, and [`RadosCluster::open_pool`], which creates one; on
//!   all of the above;
//! * `borrowed`: [`RadosBackend::over_ioctx`], a backend over a caller's
//!   own `rados_ioctx_t` (for the librbd C ABI); on `cluster` and `backend`.

#![warn(clippy::unwrap_used)]
mod aio;
mod backend;
mod borrowed;
mod cluster;
mod error;
mod pool_full;
mod watch;

pub use backend::RadosBackend;
pub use cluster::{ClusterConfig, RadosCluster, DEFAULT_OSD_OP_TIMEOUT_SECS};
pub use error::classify;
pub use pool_full::PoolFullStats;
pub use watch::{parse_notify_reply, NotifyAck, NotifyReply};

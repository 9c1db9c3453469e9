//! [`RadosBackend`]: the row-layer object-store contract on a RADOS pool.

use crate::aio::{submit, OpState, StallHook};
use crate::cluster::{blocking, cstring, IoCtx, RadosCluster};
use crate::error::{check, corrupt, errno, io, rados_error, rados_error_as};
use crate::pool_full::{PoolFullStats, PoolSpace, STALL_CHECK};
use crate::watch::{
    on_notify, on_watch_error, parse_notify_reply, NotifyReply, WatchCtx, WatchEvent,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use librados_sys as sys;
use row_layer::backend::{
    Action, Backend, Guard, LockOwner, Notification, ObjectStat, Watch, WriteOp,
};
use row_layer::{Error, ErrorKind, Result};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Reads up to this length go straight to `rados_aio_read` with a buffer of
/// the requested size; longer requests are first clamped to the object size.
const DIRECT_READ_MAX: u64 = 8 << 20;

/// Largest xattr value `get_xattr` accepts.
const XATTR_MAX: usize = 64 << 20;

/// One watch of this backend, as its user sees it: it keeps its id while
/// the librados watch under it is re-registered after errors.
struct WatchEntry {
    /// The callback context (a `*mut WatchCtx`, as an integer so that the
    /// entry is `Send`): shared by every registration of this watch, freed
    /// once, after the last unwatch and a watch flush.
    ctx: usize,
    oid: String,
    /// The current librados watch cookie; `None` while unregistered.
    cookie: Option<u64>,
    /// Set by `unwatch`: no registration may be made any more.
    closed: bool,
}

type SharedEntry = Arc<Mutex<WatchEntry>>;

/// The row-layer [`Backend`] on one RADOS pool and namespace.
///
/// Every mutation is a single RADOS write operation, so the contract's
/// atomicity holds across crashes; completed operations are durable, so
/// [`Backend::flush`] is free.
pub struct RadosBackend {
    cluster: RadosCluster,
    io: Arc<IoCtx>,
    /// The same pool and namespace with `rados_set_pool_full_try`: for
    /// locking and watches, whose ops never grow the pool (see
    /// `pool_full`); librados would hold them on a full pool.
    io_try: Arc<IoCtx>,
    /// The pool's full flag and the writes that may be cancelled for it.
    space: Arc<PoolSpace>,
    pool: String,
    namespace: String,
    watches: Arc<Mutex<HashMap<u64, SharedEntry>>>,
    next_watch_id: AtomicU64,
    /// Watch timeout asked of the OSDs (`None`: their
    /// `osd_client_watch_timeout`, 30 s by default).
    watch_timeout: Option<Duration>,
    /// Longest wait for one asynchronous operation (see `with_op_timeout`).
    op_timeout: Option<Duration>,
    stats: Arc<WatchStats>,
}

/// Counters of watch failures, for tests and metrics.
#[derive(Debug, Default)]
struct WatchStats {
    errors: AtomicU64,
    rewatches: AtomicU64,
}

/// How often a watch's health is checked with `rados_watch_check`, besides
/// librados' error callback.
const WATCH_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Backoff between attempts to re-register a broken watch.
const REWATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REWATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl std::fmt::Debug for RadosBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadosBackend")
            .field("pool", &self.pool)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn lock_map<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// `ptr` for a byte slice as librados' `const char *`.
fn cptr(b: &[u8]) -> *const c_char {
    b.as_ptr().cast::<c_char>()
}

/// The first guard, in order, that fails if the object does not exist.
fn first_failing_if_missing(guards: &[Guard]) -> Option<&Guard> {
    guards.iter().find(|g| match g {
        Guard::Exists | Guard::XattrEquals(..) => true,
        Guard::VersionEquals(v) => *v != 0,
        Guard::NotExists => false,
    })
}

/// The first guard, in order, that fails if the object exists.
fn first_failing_if_present(guards: &[Guard]) -> Option<&Guard> {
    guards
        .iter()
        .find(|g| matches!(g, Guard::NotExists | Guard::VersionEquals(0)))
}

fn guard_error(g: &Guard, oid: &str, code: i32) -> Error {
    let (kind, what) = match g {
        Guard::Exists => (ErrorKind::NotFound, format!("object {oid} does not exist")),
        Guard::NotExists => (
            ErrorKind::AlreadyExists,
            format!("object {oid} already exists"),
        ),
        Guard::XattrEquals(name, _) => (
            ErrorKind::PreconditionFailed,
            format!("xattr {name} of {oid} does not match"),
        ),
        Guard::VersionEquals(v) => (
            ErrorKind::PreconditionFailed,
            format!("version of {oid} is not {v}"),
        ),
    };
    rados_error_as(kind, code, what)
}

/// Maps the return code of a write operation, given its guards.
fn operate_result(ret: c_int, oid: &str, op: &WriteOp) -> Result<()> {
    if ret >= 0 {
        return Ok(());
    }
    let pure_remove = op.actions == [Action::Remove];
    match -ret {
        errno::ENOENT => {
            if pure_remove && op.guards.is_empty() {
                return Ok(()); // removing a missing object is idempotent
            }
            match first_failing_if_missing(&op.guards) {
                Some(g) => Err(guard_error(g, oid, ret)),
                None => Err(rados_error(ret, format_args!("operate on {oid}"))),
            }
        }
        errno::EEXIST => match first_failing_if_present(&op.guards) {
            Some(g) => Err(guard_error(g, oid, ret)),
            None => Err(rados_error(ret, format_args!("operate on {oid}"))),
        },
        errno::ECANCELED => {
            let g = op
                .guards
                .iter()
                .find(|g| matches!(g, Guard::XattrEquals(..)));
            Err(match g {
                Some(g) => guard_error(g, oid, ret),
                None => rados_error(ret, format_args!("operate on {oid}")),
            })
        }
        errno::ERANGE | errno::EOVERFLOW => {
            let g = op
                .guards
                .iter()
                .find(|g| matches!(g, Guard::VersionEquals(v) if *v != 0));
            Err(match g {
                Some(g) => guard_error(g, oid, ret),
                None => rados_error(ret, format_args!("operate on {oid}")),
            })
        }
        _ => Err(rados_error(ret, format_args!("operate on {oid}"))),
    }
}

/// Builds the librados write operation for `op` into `st.write_op`.
fn build_write_op(st: &mut OpState, op: &WriteOp) -> Result<()> {
    // SAFETY: plain constructor; the handle is owned by `st` from now on.
    let w = unsafe { sys::rados_create_write_op() };
    if w.is_null() {
        return Err(io("rados_create_write_op failed"));
    }
    st.write_op = w;
    let pure_remove = op.actions == [Action::Remove];
    // SAFETY (all calls below): `w` is a live write op; librados copies
    // every name, key and buffer into the operation before returning.
    for g in &op.guards {
        match g {
            Guard::Exists => unsafe { sys::rados_write_op_assert_exists(w) },
            Guard::NotExists | Guard::VersionEquals(0) => unsafe {
                sys::rados_write_op_create(w, sys::LIBRADOS_CREATE_EXCLUSIVE as c_int, ptr::null())
            },
            Guard::XattrEquals(name, value) => {
                let n = cstring(name, "xattr name")?;
                unsafe {
                    sys::rados_write_op_cmpxattr(
                        w,
                        n.as_ptr(),
                        sys::LIBRADOS_CMPXATTR_OP_EQ as u8,
                        cptr(value),
                        value.len(),
                    )
                }
            }
            Guard::VersionEquals(v) => unsafe { sys::rados_write_op_assert_version(w, *v) },
        }
    }
    for a in &op.actions {
        if matches!(
            a,
            Action::Zero { .. }
                | Action::Truncate(_)
                | Action::OmapRemove(_)
                | Action::OmapClear
                | Action::RemoveXattr(_)
        ) {
            // On a missing object RADOS fails these with ENOENT (omap and
            // xattr removal) or does nothing (zero, truncate); the contract
            // has every action but Remove create the object.
            unsafe {
                sys::rados_write_op_create(w, sys::LIBRADOS_CREATE_IDEMPOTENT as c_int, ptr::null())
            }
        }
        match a {
            Action::Create => unsafe {
                sys::rados_write_op_create(w, sys::LIBRADOS_CREATE_IDEMPOTENT as c_int, ptr::null())
            },
            Action::Write { offset, data } => unsafe {
                sys::rados_write_op_write(w, cptr(data), data.len(), *offset)
            },
            Action::WriteFull(data) => unsafe {
                sys::rados_write_op_write_full(w, cptr(data), data.len())
            },
            Action::Zero { offset, len } => unsafe { sys::rados_write_op_zero(w, *offset, *len) },
            Action::Truncate(size) => unsafe { sys::rados_write_op_truncate(w, *size) },
            Action::OmapSet(kvs) => {
                let keys: Vec<*const c_char> =
                    kvs.iter().map(|(k, _)| cptr(k.as_bytes())).collect();
                let key_lens: Vec<usize> = kvs.iter().map(|(k, _)| k.len()).collect();
                let vals: Vec<*const c_char> = kvs.iter().map(|(_, v)| cptr(v)).collect();
                let val_lens: Vec<usize> = kvs.iter().map(|(_, v)| v.len()).collect();
                unsafe {
                    sys::rados_write_op_omap_set2(
                        w,
                        keys.as_ptr(),
                        vals.as_ptr(),
                        key_lens.as_ptr(),
                        val_lens.as_ptr(),
                        kvs.len(),
                    )
                }
            }
            Action::OmapRemove(keys) => {
                let ptrs: Vec<*const c_char> = keys.iter().map(|k| cptr(k.as_bytes())).collect();
                let lens: Vec<usize> = keys.iter().map(String::len).collect();
                unsafe {
                    sys::rados_write_op_omap_rm_keys2(w, ptrs.as_ptr(), lens.as_ptr(), keys.len())
                }
            }
            Action::OmapClear => unsafe { sys::rados_write_op_omap_clear(w) },
            Action::SetXattr(name, value) => {
                let n = cstring(name, "xattr name")?;
                unsafe { sys::rados_write_op_setxattr(w, n.as_ptr(), cptr(value), value.len()) }
            }
            Action::RemoveXattr(name) => {
                let n = cstring(name, "xattr name")?;
                unsafe { sys::rados_write_op_rmxattr(w, n.as_ptr()) }
            }
            Action::Remove => {
                if !pure_remove {
                    // RADOS fails a delete of a missing object with ENOENT;
                    // inside a compound op ("remove, then write") the
                    // contract makes that a no-op, so make sure it exists.
                    unsafe {
                        sys::rados_write_op_create(
                            w,
                            sys::LIBRADOS_CREATE_IDEMPOTENT as c_int,
                            ptr::null(),
                        )
                    }
                }
                unsafe { sys::rados_write_op_remove(w) }
            }
        }
    }
    Ok(())
}

/// Whether a full pool must hold `op` back (see `pool_full`): it writes
/// data at an offset or sets omap keys, which the OSD lets through a full
/// pool when sent full-try (an overwrite does not grow the pool's byte
/// count, and omap is not counted), so they would go on past a quota.
/// Every other op is sent full-try and the OSD decides exactly: it applies
/// it unless it grows the pool's bytes or objects (a removal, zeroing, a
/// header rewrite that is not larger, an xattr on an existing object) and
/// otherwise answers `EDQUOT`/`ENOSPC`, applying nothing.
fn held_when_full(op: &WriteOp) -> bool {
    op.actions
        .iter()
        .any(|a| matches!(a, Action::Write { .. } | Action::OmapSet(_)))
}

/// A second ioctx on the pool and namespace of `io`, with
/// `rados_set_pool_full_try`, for ops that cannot grow the pool. Falls back
/// to `io` itself (ops then wait on a full pool) if it cannot be made.
fn full_try_ioctx(cluster: &RadosCluster, io: &Arc<IoCtx>, pool_id: i64, ns: &str) -> Arc<IoCtx> {
    let made = cstring(ns, "namespace").and_then(|c_ns| {
        let own = cluster.open_ioctx_by_id_blocking(pool_id, &c_ns)?;
        // SAFETY: a fresh ioctx, not yet shared.
        unsafe { sys::rados_set_pool_full_try(own.ptr()) };
        Ok(own)
    });
    made.unwrap_or_else(|e| {
        tracing::warn!("no full-try ioctx for pool {pool_id}: {e}");
        io.clone()
    })
}

/// Parses the NUL-separated string list `rados_list_lockers` fills.
fn split_nul(buf: &[u8], len: usize) -> Vec<String> {
    let end = len.min(buf.len());
    buf[..end]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl RadosCluster {
    /// Opens `pool` (and `namespace`, `""` for the default) as a backend.
    pub async fn open_pool(&self, pool: &str, namespace: &str) -> Result<RadosBackend> {
        let cluster = self.clone();
        let c_pool = cstring(pool, "pool name")?;
        let c_ns = cstring(namespace, "namespace")?;
        let (pool, namespace) = (pool.to_string(), namespace.to_string());
        blocking(move || {
            let ioctx = cluster.open_ioctx_blocking(&c_pool, &c_ns, &pool)?;
            Ok(RadosBackend::new(cluster, ioctx, pool, namespace))
        })
        .await
    }
}

impl RadosBackend {
    pub(crate) fn new(
        cluster: RadosCluster,
        io: Arc<IoCtx>,
        pool: String,
        namespace: String,
    ) -> RadosBackend {
        let op_timeout = default_op_timeout(&cluster);
        // SAFETY: a valid ioctx.
        let pool_id = unsafe { sys::rados_ioctx_get_id(io.ptr()) };
        let io_try = full_try_ioctx(&cluster, &io, pool_id, &namespace);
        let space = Arc::new(PoolSpace::new(cluster.clone(), pool_id, pool.clone()));
        RadosBackend {
            cluster,
            io,
            io_try,
            space,
            pool,
            namespace,
            watches: Arc::new(Mutex::new(HashMap::new())),
            next_watch_id: AtomicU64::new(1),
            watch_timeout: None,
            op_timeout,
            stats: Arc::new(WatchStats::default()),
        }
    }

    /// Bounds the wait for each asynchronous operation (read, stat, omap
    /// read, write op): one whose completion has not fired after `timeout`
    /// fails with a `Transient` error (`ETIMEDOUT`) and is abandoned (its
    /// buffers stay with librados until it completes; a write may still
    /// land). `None`: wait forever.
    pub fn with_op_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The operation timeout in force (see [`RadosBackend::with_op_timeout`]).
    pub fn op_timeout(&self) -> Option<Duration> {
        self.op_timeout
    }

    /// Asks the OSDs to drop this client's watches when it has not pinged
    /// them for `timeout` (whole seconds, at least 1; librados pings every
    /// few seconds). Without it the OSDs use `osd_client_watch_timeout`.
    pub fn with_watch_timeout(mut self, timeout: Duration) -> Self {
        self.watch_timeout = Some(timeout);
        self
    }

    /// How many watch errors (e.g. `ENOTCONN` after the OSD timed a watch
    /// out) librados has reported to this backend.
    pub fn watch_errors(&self) -> u64 {
        self.stats.errors.load(Ordering::Relaxed)
    }

    /// How many times a broken watch was registered again.
    pub fn rewatches(&self) -> u64 {
        self.stats.rewatches.load(Ordering::Relaxed)
    }

    /// What this backend did about its pool being full (see `pool_full`).
    pub fn pool_full_stats(&self) -> PoolFullStats {
        self.space.stats()
    }

    /// How many writes that may be cancelled for a full pool are in flight.
    pub fn cancellable_writes(&self) -> usize {
        self.space.inflight.len()
    }

    /// The cluster this backend's pool belongs to.
    pub fn cluster(&self) -> &RadosCluster {
        &self.cluster
    }

    /// The pool name.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The namespace within the pool (`""` for the default one).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Size and version, or `None` if the object does not exist.
    async fn stat_opt(&self, oid: &str) -> Result<Option<ObjectStat>> {
        let st = OpState::new(self.io.clone(), cstring(oid, "object name")?);
        let st = submit(st, self.op_timeout, None, |raw, comp| {
            // SAFETY: `raw` is the leaked state (stable address, owned by
            // the op until completion); the read op is stored in it and
            // released with it.
            unsafe {
                let r = sys::rados_create_read_op();
                if r.is_null() {
                    return -errno::EIO;
                }
                (*raw).read_op = r;
                sys::rados_read_op_stat(
                    r,
                    ptr::addr_of_mut!((*raw).stat_size),
                    ptr::addr_of_mut!((*raw).stat_mtime),
                    ptr::addr_of_mut!((*raw).stat_rval),
                );
                sys::rados_aio_read_op_operate(r, (*raw).io(), comp, (*raw).oid.as_ptr(), 0)
            }
        })
        .await
        .map_err(|r| rados_error(r, format_args!("stat {oid}")))?;
        if st.ret == -errno::ENOENT {
            return Ok(None);
        }
        check(st.ret, format_args!("stat {oid}"))?;
        check(st.stat_rval, format_args!("stat {oid}"))?;
        Ok(Some(ObjectStat {
            size: st.stat_size,
            version: st.version,
        }))
    }

    async fn read_impl(&self, oid: &str, offset: u64, len: u64) -> Result<Bytes> {
        let mut len = len;
        if len > DIRECT_READ_MAX {
            let size = self
                .stat_opt(oid)
                .await?
                .ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, format!("object {oid} does not exist"))
                })?
                .size;
            len = len.min(size.saturating_sub(offset));
        }
        let len = usize::try_from(len).map_err(|_| io(format!("read of {len} bytes too large")))?;
        if len == 0 {
            // Still report NotFound for a missing object.
            self.stat_opt(oid).await?.ok_or_else(|| {
                Error::new(ErrorKind::NotFound, format!("object {oid} does not exist"))
            })?;
            return Ok(Bytes::new());
        }
        let mut st = OpState::new(self.io.clone(), cstring(oid, "object name")?);
        st.buf = Vec::with_capacity(len);
        let st = submit(st, self.op_timeout, None, |raw, comp| {
            // SAFETY: the buffer (capacity `len`) lives in the leaked state
            // until the completion has fired.
            unsafe {
                let buf = (*raw).buf.as_mut_ptr().cast::<c_char>();
                sys::rados_aio_read((*raw).io(), (*raw).oid.as_ptr(), comp, buf, len, offset)
            }
        })
        .await
        .map_err(|r| rados_error(r, format_args!("read {oid}")))?;
        let n = check(st.ret, format_args!("read {oid} at {offset}"))? as usize;
        if n > len {
            return Err(corrupt(format!(
                "read {oid}: librados returned {n} bytes for {len}"
            )));
        }
        let mut st = st;
        let mut buf = std::mem::take(&mut st.buf);
        // SAFETY: librados wrote `n <= capacity` bytes into the buffer.
        unsafe { buf.set_len(n) };
        Ok(Bytes::from(buf))
    }

    async fn omap_get_impl(
        &self,
        oid: &str,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<(String, Bytes)>> {
        let c_prefix = cstring(prefix, "omap prefix")?;
        let mut after = start_after.to_string();
        let mut out: Vec<(String, Bytes)> = Vec::new();
        loop {
            let want = (max - out.len()) as u64;
            let mut st = OpState::new(self.io.clone(), cstring(oid, "object name")?);
            st.strings = vec![cstring(&after, "omap key")?, c_prefix.clone()];
            let st = submit(st, self.op_timeout, None, |raw, comp| {
                // SAFETY: out-parameters live in the leaked state; the strings
                // are copied by librados.
                unsafe {
                    let r = sys::rados_create_read_op();
                    if r.is_null() {
                        return -errno::EIO;
                    }
                    (*raw).read_op = r;
                    let strings = &(*raw).strings;
                    let (start, filter) = (strings[0].as_ptr(), strings[1].as_ptr());
                    sys::rados_read_op_omap_get_vals2(
                        r,
                        start,
                        filter,
                        want,
                        ptr::addr_of_mut!((*raw).omap_iter),
                        ptr::addr_of_mut!((*raw).omap_more),
                        ptr::addr_of_mut!((*raw).omap_rval),
                    );
                    sys::rados_aio_read_op_operate(r, (*raw).io(), comp, (*raw).oid.as_ptr(), 0)
                }
            })
            .await
            .map_err(|r| rados_error(r, format_args!("omap_get {oid}")))?;
            check(st.ret, format_args!("omap_get {oid}"))?;
            check(st.omap_rval, format_args!("omap_get {oid}"))?;
            let before = out.len();
            loop {
                let (mut k, mut v) = (ptr::null_mut::<c_char>(), ptr::null_mut::<c_char>());
                let (mut kl, mut vl) = (0usize, 0usize);
                // SAFETY: the iterator belongs to the completed op in `st`.
                let r = unsafe {
                    sys::rados_omap_get_next2(st.omap_iter, &mut k, &mut v, &mut kl, &mut vl)
                };
                check(r, format_args!("omap iteration of {oid}"))?;
                if k.is_null() {
                    break;
                }
                // SAFETY: key and value point at kl / vl bytes valid until
                // the iterator advances or ends.
                let key = unsafe { std::slice::from_raw_parts(k.cast::<u8>(), kl) };
                let val = if v.is_null() || vl == 0 {
                    Bytes::new()
                } else {
                    // SAFETY: as above.
                    Bytes::copy_from_slice(unsafe {
                        std::slice::from_raw_parts(v.cast::<u8>(), vl)
                    })
                };
                let key = String::from_utf8(key.to_vec())
                    .map_err(|_| corrupt(format!("omap key of {oid} is not UTF-8")))?;
                if out.len() < max {
                    out.push((key, val));
                }
            }
            let more = st.omap_more != 0;
            if !more || out.len() >= max || out.len() == before {
                return Ok(out);
            }
            after = out.last().map(|(k, _)| k.clone()).unwrap_or_default();
        }
    }

    async fn get_xattr_impl(&self, oid: &str, name: &str) -> Result<Option<Bytes>> {
        let io = self.io.clone();
        let c_oid = cstring(oid, "object name")?;
        let c_name = cstring(name, "xattr name")?;
        let shown = format!("getxattr {name} of {oid}");
        blocking(move || {
            let mut cap = 4096usize;
            loop {
                let mut buf = vec![0u8; cap];
                // SAFETY: valid ioctx, strings, and a buffer of `cap` bytes.
                let r = unsafe {
                    sys::rados_getxattr(
                        io.ptr(),
                        c_oid.as_ptr(),
                        c_name.as_ptr(),
                        buf.as_mut_ptr().cast::<c_char>(),
                        cap,
                    )
                };
                if r == -errno::ENODATA {
                    return Ok(None);
                }
                if r == -errno::ERANGE && cap < XATTR_MAX {
                    cap *= 8;
                    continue;
                }
                let n = check(r, &shown)? as usize;
                if n > cap {
                    return Err(corrupt(format!(
                        "{shown}: {n} bytes for a {cap}-byte buffer"
                    )));
                }
                buf.truncate(n);
                return Ok(Some(Bytes::from(buf)));
            }
        })
        .await
    }

    async fn operate_impl(&self, oid: &str, op: WriteOp) -> Result<()> {
        if op.actions.is_empty() {
            return self.check_guards(oid, &op.guards).await;
        }
        let pure_remove = op.actions == [Action::Remove];
        if pure_remove
            && op
                .guards
                .iter()
                .any(|g| matches!(g, Guard::NotExists | Guard::VersionEquals(0)))
        {
            // Guards that require absence, then a remove that requires
            // presence: either a guard or the remove fails (as in mem).
            self.check_guards(oid, &op.guards).await?;
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("object {oid} does not exist"),
            ));
        }
        let mut st = OpState::new(self.io.clone(), cstring(oid, "object name")?);
        build_write_op(&mut st, &op)?;
        let held = held_when_full(&op);
        let flags = if held {
            // Refused while the pool is known full; cancelled if it waits
            // on a pool that turns out full (see `pool_full`).
            self.space.admit(&format!("operate on {oid}")).await?;
            st.cancellable(self.space.inflight.clone());
            sys::LIBRADOS_OPERATION_NOFLAG
        } else {
            // Never held for a full pool: the OSD applies it unless it
            // grows the pool, and then refuses it (EDQUOT/ENOSPC).
            sys::LIBRADOS_OPERATION_FULL_TRY
        };
        let hook: &dyn StallHook = &*self.space;
        let stall = held.then_some((hook, STALL_CHECK));
        let st = submit(st, self.op_timeout, stall, |raw, comp| {
            // SAFETY: the write op and object name live in the leaked state.
            unsafe {
                sys::rados_aio_write_op_operate(
                    (*raw).write_op,
                    (*raw).io(),
                    comp,
                    (*raw).oid.as_ptr(),
                    ptr::null_mut(),
                    flags as c_int,
                )
            }
        })
        .await
        .map_err(|r| rados_error(r, format_args!("submit operate on {oid}")))?;
        if st.ret == -errno::ECANCELED && st.cancelled() {
            return Err(self.space.cancelled_error(format_args!("operate on {oid}")));
        }
        operate_result(st.ret, oid, &op)
    }

    /// Evaluates guards of an op without actions (nothing to apply, so a
    /// non-atomic evaluation is indistinguishable from an atomic one).
    async fn check_guards(&self, oid: &str, guards: &[Guard]) -> Result<()> {
        if guards.is_empty() {
            return Ok(());
        }
        let stat = self.stat_opt(oid).await?;
        for g in guards {
            let ok = match (g, &stat) {
                (Guard::Exists, s) => s.is_some(),
                (Guard::NotExists, s) => s.is_none(),
                (Guard::VersionEquals(v), s) => s.map_or(0, |s| s.version) == *v,
                (Guard::XattrEquals(..), None) => false,
                (Guard::XattrEquals(name, value), Some(_)) => {
                    match self.get_xattr_impl(oid, name).await {
                        Ok(have) => have.as_ref() == Some(value),
                        Err(e) if e.kind() == ErrorKind::NotFound => false,
                        Err(e) => return Err(e),
                    }
                }
            };
            if !ok {
                let code = if stat.is_some() {
                    errno::EEXIST
                } else {
                    errno::ENOENT
                };
                let code = match g {
                    Guard::XattrEquals(..) => errno::ECANCELED,
                    Guard::VersionEquals(v) if *v != 0 => errno::ERANGE,
                    _ => code,
                };
                return Err(guard_error(g, oid, -code));
            }
        }
        Ok(())
    }

    async fn list_impl(&self, prefix: &str) -> Result<Vec<String>> {
        let io = self.io.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            let mut ctx: sys::rados_list_ctx_t = ptr::null_mut();
            // SAFETY: valid ioctx and out-pointer.
            let r = unsafe { sys::rados_nobjects_list_open(io.ptr(), &mut ctx) };
            check(r, "listing objects")?;
            struct Close(sys::rados_list_ctx_t);
            impl Drop for Close {
                fn drop(&mut self) {
                    // SAFETY: opened above, closed once.
                    unsafe { sys::rados_nobjects_list_close(self.0) };
                }
            }
            let _close = Close(ctx);
            let mut names = Vec::new();
            loop {
                let mut entry: *const c_char = ptr::null();
                let mut entry_size = 0usize;
                // SAFETY: valid list context; key/nspace not requested.
                let r = unsafe {
                    sys::rados_nobjects_list_next2(
                        ctx,
                        &mut entry,
                        ptr::null_mut(),
                        ptr::null_mut(),
                        &mut entry_size,
                        ptr::null_mut(),
                        ptr::null_mut(),
                    )
                };
                if r == -errno::ENOENT {
                    break;
                }
                check(r, "listing objects")?;
                if entry.is_null() {
                    continue;
                }
                // SAFETY: entry points at entry_size bytes until the next call.
                let name = unsafe { std::slice::from_raw_parts(entry.cast::<u8>(), entry_size) };
                if !name.starts_with(prefix.as_bytes()) {
                    continue;
                }
                match std::str::from_utf8(name) {
                    Ok(s) => names.push(s.to_string()),
                    Err(_) => tracing::warn!("skipping object with non-UTF-8 name {name:?}"),
                }
            }
            Ok(names)
        })
        .await
    }

    /// Sends a notification and returns every watcher's decoded answer,
    /// including those who timed out.
    pub async fn notify_raw(
        &self,
        oid: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<NotifyReply> {
        let io = self.io.clone();
        let c_oid = cstring(oid, "object name")?;
        let len = c_int::try_from(payload.len())
            .map_err(|_| crate::error::invalid("notify payload larger than 2 GiB"))?;
        // librados hands the OSD whole seconds (timeout_ms / 1000), and 0
        // means the OSD's default (30 s): round up to a whole second.
        let timeout_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
            .div_ceil(1000)
            .saturating_mul(1000);
        let shown = format!("notify {oid}");
        blocking(move || {
            let mut reply: *mut c_char = ptr::null_mut();
            let mut reply_len = 0usize;
            // SAFETY: valid ioctx, name, payload; out-pointers valid; the
            // reply buffer is freed below.
            let r = unsafe {
                sys::rados_notify2(
                    io.ptr(),
                    c_oid.as_ptr(),
                    cptr(&payload),
                    len,
                    timeout_ms,
                    &mut reply,
                    &mut reply_len,
                )
            };
            let parsed = if reply.is_null() {
                Ok(NotifyReply::default())
            } else {
                // SAFETY: librados returned reply_len bytes at reply.
                let bytes = unsafe { std::slice::from_raw_parts(reply.cast::<u8>(), reply_len) };
                let p = parse_notify_reply(bytes);
                // SAFETY: allocated by librados, freed once.
                unsafe { sys::rados_buffer_free(reply) };
                p
            };
            if r == -errno::ENOENT {
                return Ok(NotifyReply::default()); // no object, no watchers
            }
            // ETIMEDOUT: some watchers did not answer; the others did.
            if r < 0 && r != -errno::ETIMEDOUT {
                return Err(rados_error(r, &shown));
            }
            parsed.map_err(|e| e.context(&shown))
        })
        .await
    }

    /// Registers a watch whose notifications go to a tokio task. The task
    /// acknowledges them with the user's replies and, when librados reports
    /// the watch broken (error callback, or `rados_watch_check` failing),
    /// registers it again with backoff, as librbd does, under the same
    /// user-visible id. Only `unwatch`, a blocklisted client or a removed
    /// object ends it.
    async fn watch_impl(&self, oid: &str) -> Result<Watch> {
        let (raw_tx, raw_rx) = mpsc::unbounded_channel::<WatchEvent>();
        // The context's address, as an integer so that the future stays Send.
        let ctx = Box::into_raw(Box::new(WatchCtx { tx: raw_tx })) as usize;
        let entry: SharedEntry = Arc::new(Mutex::new(WatchEntry {
            ctx,
            oid: oid.to_string(),
            cookie: None,
            closed: false,
        }));
        let io = self.io_try.clone();
        let timeout = watch_timeout_secs(self.watch_timeout);
        let registered = {
            let entry = entry.clone();
            blocking(move || register_blocking(&io, &entry, timeout)).await
        };
        let cookie = match registered {
            Ok(Some(c)) => c,
            Ok(None) => return Err(io_closed(oid)),
            Err(e) => {
                // SAFETY: never registered: no callback can use the context.
                drop(unsafe { Box::from_raw(ctx as *mut WatchCtx) });
                return Err(e);
            }
        };
        let id = self.next_watch_id.fetch_add(1, Ordering::Relaxed);
        lock_map(&self.watches).insert(id, entry.clone());
        let (user_tx, user_rx) = mpsc::unbounded_channel::<Notification>();
        tokio::spawn(serve_watch(WatchTask {
            io: self.io_try.clone(),
            oid: oid.to_string(),
            entry,
            cookie,
            timeout,
            stats: self.stats.clone(),
            raw_rx,
            user_tx,
        }));
        Ok(Watch {
            id,
            events: user_rx,
        })
    }

    async fn unwatch_impl(&self, watch_id: u64) -> Result<()> {
        let Some(entry) = lock_map(&self.watches).remove(&watch_id) else {
            return Ok(());
        };
        let io = self.io_try.clone();
        blocking(move || unwatch_blocking(&io, &entry)).await
    }
}

fn io_closed(oid: &str) -> Error {
    io(format!("watch {oid} was closed while registering"))
}

/// What the task of one watch owns.
struct WatchTask {
    io: Arc<IoCtx>,
    oid: String,
    entry: SharedEntry,
    /// The cookie of the current registration.
    cookie: u64,
    timeout: u32,
    stats: Arc<WatchStats>,
    raw_rx: mpsc::UnboundedReceiver<WatchEvent>,
    user_tx: mpsc::UnboundedSender<Notification>,
}

/// Forwards notifications to the user and keeps the watch registered.
/// Ends when the watch is unwatched (its context, holding the sender of
/// `raw_rx`, is freed) or the client is blocklisted.
async fn serve_watch(mut t: WatchTask) {
    let mut check = tokio::time::interval(WATCH_CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let broken: Option<c_int> = tokio::select! {
            ev = t.raw_rx.recv() => match ev {
                None => return,
                Some(WatchEvent::Notify { notify_id, cookie, notifier_id, payload }) => {
                    tracing::trace!(oid = %t.oid, notify_id, cookie, notifier_id, "notification");
                    let (reply_tx, reply_rx) = oneshot::channel::<Bytes>();
                    let _ = t.user_tx.send(Notification {
                        payload,
                        reply: reply_tx,
                    });
                    let io = t.io.clone();
                    let oid = t.oid.clone();
                    tokio::spawn(async move {
                        let reply = reply_rx.await.unwrap_or_default();
                        ack(&io, &oid, notify_id, cookie, &reply);
                    });
                    None
                }
                // An error of an earlier registration is old news.
                Some(WatchEvent::Error { cookie, err }) => (cookie == t.cookie).then_some(err),
            },
            _ = check.tick() => {
                // Under the entry's lock, so that the cookie cannot be
                // unwatched meanwhile (the call is local and quick).
                let e = lock_map(&t.entry);
                if e.closed {
                    return;
                }
                // SAFETY: the current, registered cookie of this ioctx.
                let r = unsafe { sys::rados_watch_check(t.io.ptr(), t.cookie) };
                drop(e);
                (r < 0).then_some(r)
            }
        };
        let Some(err) = broken else { continue };
        t.stats.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            oid = %t.oid,
            cookie = t.cookie,
            "watch failed: {}; registering it again",
            std::io::Error::from_raw_os_error(err.saturating_abs())
        );
        let mut backoff = REWATCH_BACKOFF_MIN;
        loop {
            let (io, entry, timeout) = (t.io.clone(), t.entry.clone(), t.timeout);
            match blocking(move || register_blocking(&io, &entry, timeout)).await {
                Ok(Some(cookie)) => {
                    t.cookie = cookie;
                    t.stats.rewatches.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(oid = %t.oid, cookie, "watch registered again");
                    break;
                }
                Ok(None) => return, // unwatched meanwhile
                Err(e) if matches!(e.kind(), ErrorKind::Fenced | ErrorKind::NotFound) => {
                    // Blocklisted, or the object is gone: retrying cannot help.
                    tracing::error!(
                        oid = %t.oid,
                        "cannot register the watch again: {e}; closing its event channel"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(oid = %t.oid, "registering the watch again: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(REWATCH_BACKOFF_MAX);
                }
            }
        }
    }
}

/// (Re-)registers the watch of `entry`: drops its current registration, if
/// any, and makes a new one with the same context. `Ok(None)` if the watch
/// was closed. Runs on the blocking pool; holds the entry's lock so that
/// `unwatch` cannot free the context meanwhile.
fn register_blocking(io: &IoCtx, entry: &Mutex<WatchEntry>, timeout: u32) -> Result<Option<u64>> {
    let mut e = lock_map(entry);
    if e.closed {
        return Ok(None);
    }
    if let Some(old) = e.cookie.take() {
        // SAFETY: a cookie of this ioctx. Fails harmlessly (ENOTCONN,
        // ENOENT) for a watch the OSD already dropped.
        let r = unsafe { sys::rados_unwatch2(io.ptr(), old) };
        if r < 0 {
            tracing::debug!(oid = %e.oid, old, "unwatch of a broken watch: errno {}", -r);
        }
    }
    let c_oid = cstring(&e.oid, "object name")?;
    let mut cookie = 0u64;
    // SAFETY: valid ioctx and name; the context stays allocated until the
    // entry is closed, unwatched and flushed (unwatch_blocking).
    let r = unsafe {
        sys::rados_watch3(
            io.ptr(),
            c_oid.as_ptr(),
            &mut cookie,
            Some(on_notify),
            Some(on_watch_error),
            timeout,
            e.ctx as *mut c_void,
        )
    };
    if r < 0 {
        return Err(rados_error(r, format_args!("watch {}", e.oid)));
    }
    e.cookie = Some(cookie);
    Ok(Some(cookie))
}

/// How much longer than librados' own `rados_osd_op_timeout` the backend
/// waits for a completion before giving up on it.
const OP_TIMEOUT_MARGIN: Duration = Duration::from_secs(15);

/// The default op timeout of a backend: librados' `rados_osd_op_timeout`
/// plus a margin (librados should fail the op first; this catches a
/// completion that never fires), or none if librados waits forever.
fn default_op_timeout(cluster: &RadosCluster) -> Option<Duration> {
    let secs: f64 = cluster
        .conf_get("rados_osd_op_timeout")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    (secs > 0.0 && secs.is_finite())
        .then(|| Duration::from_secs_f64(secs.min(1e9)) + OP_TIMEOUT_MARGIN)
}

/// The `timeout` argument of `rados_watch3`: 0 lets the OSD choose.
fn watch_timeout_secs(t: Option<Duration>) -> u32 {
    t.map_or(0, |t| u32::try_from(t.as_secs().max(1)).unwrap_or(u32::MAX))
}

/// Acknowledges a notification (librados sends the ack asynchronously).
fn ack(io: &IoCtx, oid: &str, notify_id: u64, cookie: u64, reply: &[u8]) {
    let Ok(c_oid) = CString::new(oid) else { return };
    let len = c_int::try_from(reply.len()).unwrap_or(0);
    let data = if len == 0 { ptr::null() } else { cptr(reply) };
    // SAFETY: valid ioctx, name and reply buffer for the duration of the call.
    let r =
        unsafe { sys::rados_notify_ack(io.ptr(), c_oid.as_ptr(), notify_id, cookie, data, len) };
    if r < 0 {
        tracing::warn!(oid, notify_id, "notify ack failed: errno {}", -r);
    }
}

/// Unregisters a watch for good, waits for its callbacks, frees its context.
fn unwatch_blocking(io: &IoCtx, entry: &Mutex<WatchEntry>) -> Result<()> {
    let (cookie, ctx, oid) = {
        let mut e = lock_map(entry);
        if e.closed {
            return Ok(());
        }
        e.closed = true;
        (e.cookie.take(), e.ctx, e.oid.clone())
    };
    // SAFETY: the cookie came from rados_watch3 on this ioctx.
    let r = cookie.map_or(0, |c| unsafe { sys::rados_unwatch2(io.ptr(), c) });
    // SAFETY: connected cluster; waits until no callback can still run.
    unsafe { sys::rados_watch_flush(io.cluster.ptr()) };
    // SAFETY: closed (no new registration), unwatched and flushed: no
    // callback holds the context.
    drop(unsafe { Box::from_raw(ctx as *mut WatchCtx) });
    if r < 0 && r != -errno::ENOENT && r != -errno::ENOTCONN {
        return Err(rados_error(r, format_args!("unwatch {oid}")));
    }
    Ok(())
}

impl Drop for RadosBackend {
    fn drop(&mut self) {
        let entries: Vec<(u64, SharedEntry)> = lock_map(&self.watches).drain().collect();
        for (_, entry) in entries {
            if let Err(e) = unwatch_blocking(&self.io_try, &entry) {
                tracing::warn!("dropping RadosBackend: {e}");
            }
        }
    }
}

fn nf(oid: &str) -> Error {
    Error::new(ErrorKind::NotFound, format!("object {oid} does not exist"))
}

impl Backend for RadosBackend {
    fn kind(&self) -> &'static str {
        "rados"
    }

    fn read(&self, oid: &str, offset: u64, len: u64) -> BoxFuture<'_, Result<Bytes>> {
        let oid = oid.to_string();
        async move { self.read_impl(&oid, offset, len).await }.boxed()
    }

    fn stat(&self, oid: &str) -> BoxFuture<'_, Result<ObjectStat>> {
        let oid = oid.to_string();
        async move { self.stat_opt(&oid).await?.ok_or_else(|| nf(&oid)) }.boxed()
    }

    fn omap_get(
        &self,
        oid: &str,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, Bytes)>>> {
        let (oid, start_after, prefix) =
            (oid.to_string(), start_after.to_string(), prefix.to_string());
        async move {
            if max == 0 {
                // Still NotFound for a missing object.
                self.stat_opt(&oid).await?.ok_or_else(|| nf(&oid))?;
                return Ok(Vec::new());
            }
            self.omap_get_impl(&oid, &start_after, &prefix, max).await
        }
        .boxed()
    }

    fn get_xattr(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Option<Bytes>>> {
        let (oid, name) = (oid.to_string(), name.to_string());
        async move { self.get_xattr_impl(&oid, &name).await }.boxed()
    }

    fn operate(&self, oid: &str, op: WriteOp) -> BoxFuture<'_, Result<()>> {
        let oid = oid.to_string();
        async move { self.operate_impl(&oid, op).await }.boxed()
    }

    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<String>>> {
        let prefix = prefix.to_string();
        async move { self.list_impl(&prefix).await }.boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        // A completed RADOS write is already durable on every replica.
        async { Ok(()) }.boxed()
    }

    fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        description: &str,
    ) -> BoxFuture<'_, Result<()>> {
        let io = self.io_try.clone();
        let args = (
            cstring(oid, "object name"),
            cstring(name, "lock name"),
            cstring(cookie, "lock cookie"),
            cstring(description, "lock description"),
        );
        let shown = format!("lock {name} on {oid} (cookie {cookie})");
        async move {
            let (o, n, c, d) = (args.0?, args.1?, args.2?, args.3?);
            blocking(move || {
                // SAFETY: valid ioctx and strings; no duration (held until
                // unlocked or broken), no flags.
                let r = unsafe {
                    sys::rados_lock_exclusive(
                        io.ptr(),
                        o.as_ptr(),
                        n.as_ptr(),
                        c.as_ptr(),
                        d.as_ptr(),
                        ptr::null_mut(),
                        0,
                    )
                };
                match r {
                    // EEXIST: we already hold it with this cookie.
                    r if r >= 0 || r == -errno::EEXIST => Ok(()),
                    r if r == -errno::EBUSY => Err(rados_error_as(
                        ErrorKind::Busy,
                        r,
                        format_args!("{shown}: held by another owner"),
                    )),
                    r => Err(rados_error(r, &shown)),
                }
            })
            .await
        }
        .boxed()
    }

    fn unlock(&self, oid: &str, name: &str, cookie: &str) -> BoxFuture<'_, Result<()>> {
        let io = self.io_try.clone();
        let args = (
            cstring(oid, "object name"),
            cstring(name, "lock name"),
            cstring(cookie, "lock cookie"),
        );
        let shown = format!("unlock {name} on {oid} (cookie {cookie})");
        async move {
            let (o, n, c) = (args.0?, args.1?, args.2?);
            blocking(move || {
                // SAFETY: valid ioctx and strings.
                let r = unsafe { sys::rados_unlock(io.ptr(), o.as_ptr(), n.as_ptr(), c.as_ptr()) };
                check(r, &shown).map(|_| ())
            })
            .await
        }
        .boxed()
    }

    fn lock_owners(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Vec<LockOwner>>> {
        let io = self.io.clone();
        let args = (cstring(oid, "object name"), cstring(name, "lock name"));
        let shown = format!("list lockers of {name} on {oid}");
        async move {
            let (o, n) = (args.0?, args.1?);
            blocking(move || {
                let mut cap = 1024usize;
                loop {
                    let mut exclusive: c_int = 0;
                    let (mut tag, mut clients, mut cookies, mut addrs) = (
                        vec![0u8; cap],
                        vec![0u8; cap],
                        vec![0u8; cap],
                        vec![0u8; cap],
                    );
                    let (mut tag_len, mut clients_len, mut cookies_len, mut addrs_len) =
                        (cap, cap, cap, cap);
                    // SAFETY: four buffers of the sizes passed, valid out-pointers.
                    let r = unsafe {
                        sys::rados_list_lockers(
                            io.ptr(),
                            o.as_ptr(),
                            n.as_ptr(),
                            &mut exclusive,
                            tag.as_mut_ptr().cast::<c_char>(),
                            &mut tag_len,
                            clients.as_mut_ptr().cast::<c_char>(),
                            &mut clients_len,
                            cookies.as_mut_ptr().cast::<c_char>(),
                            &mut cookies_len,
                            addrs.as_mut_ptr().cast::<c_char>(),
                            &mut addrs_len,
                        )
                    };
                    if r == -(errno::ERANGE as isize) {
                        let need = tag_len.max(clients_len).max(cookies_len).max(addrs_len);
                        if need <= cap || need > (64 << 20) {
                            return Err(crate::error::io(format!(
                                "{shown}: bad buffer size {need}"
                            )));
                        }
                        cap = need;
                        continue;
                    }
                    if r == -(errno::ENOENT as isize) {
                        return Ok(Vec::new()); // no object, no lock
                    }
                    if r < 0 {
                        return Err(rados_error(i32::try_from(r).unwrap_or(i32::MIN), &shown));
                    }
                    let clients = split_nul(&clients, clients_len);
                    let cookies = split_nul(&cookies, cookies_len);
                    let addrs = split_nul(&addrs, addrs_len);
                    let n = usize::try_from(r).unwrap_or(0);
                    if clients.len() < n || cookies.len() < n {
                        return Err(corrupt(format!(
                            "{shown}: {n} lockers but {} clients, {} cookies",
                            clients.len(),
                            cookies.len()
                        )));
                    }
                    return Ok((0..n)
                        .map(|i| LockOwner {
                            client: clients[i].clone(),
                            cookie: cookies[i].clone(),
                            address: addrs.get(i).cloned().unwrap_or_default(),
                        })
                        .collect());
                }
            })
            .await
        }
        .boxed()
    }

    fn break_lock(&self, oid: &str, name: &str, owner: &LockOwner) -> BoxFuture<'_, Result<()>> {
        let io = self.io_try.clone();
        let args = (
            cstring(oid, "object name"),
            cstring(name, "lock name"),
            cstring(&owner.client, "lock client"),
            cstring(&owner.cookie, "lock cookie"),
        );
        let shown = format!(
            "break lock {name} on {oid} held by {} (cookie {})",
            owner.client, owner.cookie
        );
        async move {
            let (o, n, cl, co) = (args.0?, args.1?, args.2?, args.3?);
            blocking(move || {
                // SAFETY: valid ioctx and strings.
                let r = unsafe {
                    sys::rados_break_lock(
                        io.ptr(),
                        o.as_ptr(),
                        n.as_ptr(),
                        cl.as_ptr(),
                        co.as_ptr(),
                    )
                };
                check(r, &shown).map(|_| ())
            })
            .await
        }
        .boxed()
    }

    fn watch(&self, oid: &str) -> BoxFuture<'_, Result<Watch>> {
        let oid = oid.to_string();
        async move { self.watch_impl(&oid).await }.boxed()
    }

    fn unwatch(&self, watch_id: u64) -> BoxFuture<'_, Result<()>> {
        async move { self.unwatch_impl(watch_id).await }.boxed()
    }

    fn fence(&self, owner: &LockOwner) -> BoxFuture<'_, Result<()>> {
        let addr = owner.address.clone();
        async move {
            if addr.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "cannot fence a lock owner without an address",
                ));
            }
            // A stale handle of this very client (dropped without closing)
            // must not make us blocklist ourselves.
            if self.cluster.instance_addr().ok().as_deref() == Some(addr.as_str()) {
                tracing::warn!(%addr, "not fencing this client's own address");
                return Ok(());
            }
            self.cluster.blocklist_add(&addr).await
        }
        .boxed()
    }

    fn notify(
        &self,
        oid: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        let oid = oid.to_string();
        async move {
            let reply = self.notify_raw(&oid, payload, timeout).await?;
            Ok(reply.acks.into_iter().map(|a| a.payload).collect())
        }
        .boxed()
    }

    fn notify_counting_timeouts(
        &self,
        oid: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(Vec<Bytes>, Option<usize>)>> {
        let oid = oid.to_string();
        async move {
            let reply = self.notify_raw(&oid, payload, timeout).await?;
            let missed = reply.timeouts.len();
            let acks = reply.acks.into_iter().map(|a| a.payload).collect();
            Ok((acks, Some(missed)))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(a: Action) -> WriteOp {
        WriteOp::new().action(a)
    }

    #[test]
    fn which_ops_a_full_pool_holds_back() {
        let b = Bytes::from_static(b"x");
        for a in [
            Action::Write {
                offset: 0,
                data: b.clone(),
            },
            Action::OmapSet(vec![("k".into(), b.clone())]),
        ] {
            assert!(held_when_full(&op(a.clone())), "{a:?}");
            // Such an action makes the whole op held back.
            let mixed = op(Action::WriteFull(b.clone())).action(a.clone());
            assert!(held_when_full(&mixed), "{a:?}");
        }
        for a in [
            Action::Create,
            Action::WriteFull(b.clone()),
            Action::SetXattr("n".into(), b.clone()),
            Action::Remove,
            Action::Zero { offset: 0, len: 1 },
            Action::Truncate(0),
            Action::OmapRemove(vec!["k".into()]),
            Action::OmapClear,
            Action::RemoveXattr("n".into()),
        ] {
            let guarded = op(a.clone()).guard(Guard::XattrEquals("o".into(), b.clone()));
            assert!(!held_when_full(&op(a.clone())), "{a:?}");
            assert!(!held_when_full(&guarded), "{a:?}");
        }
    }
}

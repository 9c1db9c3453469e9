//! A pool over its quota (or on full OSDs): fail writes, do not stall them.
//!
//! When the monitors flag a pool full (`full`, plus `full_quota` for a
//! quota), librados holds every write to it (`Objecter` pauses ops that
//! respect the full flag) until the flag clears or `rados_osd_op_timeout`
//! expires: a client writing through us would hang for minutes. Ceph's own
//! file-system client has the same problem and cancels its waiting writes
//! with `ENOSPC` when it sees the flag (`Client::_handle_full_flag`); the
//! backend does the same here:
//!
//! The OSD itself only refuses an op on a full pool if it grows the pool's
//! byte or object count, and only if the op is sent `FULL_TRY` (it drops
//! others); overwrites and omap updates (not counted) pass. So writes are
//! split in two:
//!
//! * Data writes at an offset and omap updates (`held_when_full` in
//!   `backend`) would go on past a quota if sent full-try, so the backend
//!   keeps them out of a full pool itself:
//!   - The C API does not expose the OSD map, so the flag is read from the
//!     monitors (`osd pool ls detail`, matched by pool id): lazily, when
//!     such a write has waited [`STALL_CHECK`] (a full pool is one cause of
//!     a stalled write; a down OSD is another), at most once per
//!     [`RECHECK`].
//!   - While the pool is known full, they are refused before they are sent
//!     (`NoSpace`, nothing applied). The flag is read again, at most once
//!     per [`RECHECK`], by the next one, so writes work again as soon as
//!     space returns.
//!   - Those already waiting are cancelled (`rados_aio_cancel`) once they
//!     have waited [`CANCEL_MIN_AGE`] and report `NoSpace`. Such a write
//!     was either held by librados (never sent) or sent before the OSD had
//!     the full map and dropped by it (an OSD drops ops of older maps once
//!     a pool is marked full); only one the OSD applied whose reply was
//!     still outstanding after that time would be reported failed although
//!     applied. The engine reads a failed data op's grain keys back (§6).
//! * Every other write (removal, zeroing, truncation, omap and xattr
//!   removal, whole-object rewrites of headers and records, xattrs,
//!   creation) is sent `LIBRADOS_OPERATION_FULL_TRY`: never held, and the
//!   OSD decides exactly. It applies the op unless it grows the pool, and
//!   otherwise answers `EDQUOT`/`ENOSPC` having applied nothing. Deleting
//!   and removing snapshots (a smaller header) thus free space on a full
//!   pool, while a snapshot create (new records, a larger header) fails
//!   at once.
//! * Locking and watches are writes to librados too, and synchronous (no
//!   cancel): they go through a second ioctx of the same pool and namespace
//!   with `rados_set_pool_full_try` (`RadosBackend::io_try`). On an
//!   existing object they change neither the pool's bytes nor its object
//!   count, so the OSD applies them on a full pool: an image can still be
//!   opened, closed and handed over while its pool is full.
//!
//! Depends on `aio` (the registry of cancellable ops), `cluster` (mon
//! commands) and `error`.

use crate::aio::{InFlight, StallHook};
use crate::cluster::RadosCluster;
use crate::error::{errno, rados_error_as};
use futures::future::BoxFuture;
use futures::FutureExt;
use row_layer::{Error, ErrorKind, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A write waiting this long makes the backend read the pool's flags.
pub(crate) const STALL_CHECK: Duration = Duration::from_secs(1);
/// The pool's flags are read at most this often.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);
/// A waiting write is cancelled for a full pool only after this long.
pub(crate) const CANCEL_MIN_AGE: Duration = Duration::from_secs(2);

/// Why a pool refuses writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fullness {
    /// Over its quota (`full_quota`): EDQUOT.
    Quota,
    /// Its OSDs are full: ENOSPC.
    Space,
}

impl Fullness {
    fn errno(self) -> i32 {
        match self {
            Fullness::Quota => errno::EDQUOT,
            Fullness::Space => errno::ENOSPC,
        }
    }
}

/// Counters of a backend's full-pool handling, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolFullStats {
    /// Reads of the pool's flags from the monitors.
    pub flag_reads: u64,
    /// Writes refused before they were sent.
    pub refused: u64,
    /// Waiting writes cancelled.
    pub cancelled: u64,
    /// Whether the pool was full at the last read.
    pub known_full: bool,
}

#[derive(Debug, Default)]
struct Known {
    full: Option<Fullness>,
    /// When the flags were last read (None: never).
    at: Option<Instant>,
}

/// What the backend knows about its pool's full flag, and its waiting writes.
pub(crate) struct PoolSpace {
    cluster: RadosCluster,
    pool_id: i64,
    pool: String,
    /// Writes in flight that may be cancelled.
    pub(crate) inflight: Arc<InFlight>,
    known: Mutex<Known>,
    /// One read of the flags at a time.
    reading: tokio::sync::Mutex<()>,
    checks: AtomicU64,
    refused: AtomicU64,
    cancelled: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fullness of pool `pool_id` in the JSON of `osd pool ls detail`.
pub(crate) fn parse_pool_flags(json: &[u8], pool_id: i64) -> Result<Option<Fullness>> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| Error::new(ErrorKind::Corrupt, format!("osd pool ls detail: {e}")))?;
    let pools = v.as_array().ok_or_else(|| {
        Error::new(
            ErrorKind::Corrupt,
            "osd pool ls detail: not a list of pools",
        )
    })?;
    let pool = pools
        .iter()
        .find(|p| p["pool_id"].as_i64() == Some(pool_id))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("pool id {pool_id} is not in the OSD map"),
            )
        })?;
    let names = pool["flags_names"].as_str().unwrap_or("");
    let has = |f: &str| names.split(',').any(|n| n.trim() == f);
    Ok(if has("full_quota") {
        Some(Fullness::Quota)
    } else if has("full") {
        Some(Fullness::Space)
    } else {
        None
    })
}

impl PoolSpace {
    pub(crate) fn new(cluster: RadosCluster, pool_id: i64, pool: String) -> PoolSpace {
        PoolSpace {
            cluster,
            pool_id,
            pool,
            inflight: Arc::new(InFlight::default()),
            known: Mutex::new(Known::default()),
            reading: tokio::sync::Mutex::new(()),
            checks: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }

    /// The fullness last read (no mon command).
    pub(crate) fn known(&self) -> Option<Fullness> {
        lock(&self.known).full
    }

    /// The fullness, read from the monitors unless read within `max_age`.
    /// A failed read (e.g. a client without `osd` read caps on the
    /// monitors) keeps what was known: writes then wait as librados makes
    /// them, up to the op timeout.
    pub(crate) async fn current(&self, max_age: Duration) -> Option<Fullness> {
        let fresh = |k: &Known| k.at.is_some_and(|t| t.elapsed() < max_age);
        {
            let k = lock(&self.known);
            if fresh(&k) {
                return k.full;
            }
        }
        let _one = self.reading.lock().await;
        {
            let k = lock(&self.known);
            if fresh(&k) {
                return k.full; // read by another caller while we waited
            }
        }
        self.checks.fetch_add(1, Ordering::Relaxed);
        let cmd = r#"{"prefix":"osd pool ls","detail":"detail","format":"json"}"#;
        let read = match self.cluster.mon_command(cmd).await {
            Ok((out, _)) => parse_pool_flags(&out, self.pool_id),
            Err(e) => Err(e),
        };
        let mut k = lock(&self.known);
        match read {
            Ok(full) => {
                if full != k.full {
                    match full {
                        Some(f) => {
                            tracing::warn!(pool = %self.pool, "pool is full ({f:?}): refusing writes")
                        }
                        None => tracing::info!(pool = %self.pool, "pool is no longer full"),
                    }
                }
                k.full = full;
            }
            Err(e) => tracing::warn!(pool = %self.pool, "cannot read the pool's full flag: {e}"),
        }
        k.at = Some(Instant::now());
        k.full
    }

    fn error(&self, f: Fullness, what: impl std::fmt::Display) -> Error {
        rados_error_as(
            ErrorKind::NoSpace,
            -f.errno(),
            format_args!("{what}: pool {} is full", self.pool),
        )
    }

    /// Refuses a write the full pool holds back if the pool is known full
    /// (after reading the flag again if the last read is older than
    /// [`RECHECK`]). Free when the pool is not known full.
    pub(crate) async fn admit(&self, what: &str) -> Result<()> {
        if self.known().is_none() {
            return Ok(());
        }
        self.refuse_if_full(RECHECK, what).await
    }

    /// Refuses the call if the pool is full, by a read at most `max_age` old.
    pub(crate) async fn refuse_if_full(&self, max_age: Duration, what: &str) -> Result<()> {
        match self.current(max_age).await {
            None => Ok(()),
            Some(f) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(self.error(f, what))
            }
        }
    }

    /// The error of a write cancelled because the pool is full.
    pub(crate) fn cancelled_error(&self, what: impl std::fmt::Display) -> Error {
        let f = self.known().unwrap_or(Fullness::Space);
        self.error(f, format_args!("{what} (cancelled while waiting)"))
    }

    /// What this backend did about full pools so far.
    pub(crate) fn stats(&self) -> PoolFullStats {
        PoolFullStats {
            flag_reads: self.checks.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            known_full: self.known().is_some(),
        }
    }
}

impl StallHook for PoolSpace {
    fn stalled(&self) -> BoxFuture<'_, ()> {
        async move {
            if self.current(RECHECK).await.is_some() {
                let n = self.inflight.cancel_older_than(CANCEL_MIN_AGE);
                if n > 0 {
                    self.cancelled.fetch_add(n as u64, Ordering::Relaxed);
                    tracing::warn!(pool = %self.pool, "cancelled {n} writes waiting on the full pool");
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_of_the_pool_by_id() {
        let json =
            br#"[{"pool_id":1,"pool_name":"rbd","flags_names":"hashpspool,selfmanaged_snaps"},
            {"pool_id":4,"pool_name":"q","flags_names":"hashpspool,full,full_quota"},
            {"pool_id":5,"pool_name":"f","flags_names":"hashpspool,full"},
            {"pool_id":6,"pool_name":"n","flags_names":"hashpspool,nearfull"}]"#;
        assert_eq!(parse_pool_flags(json, 1).ok(), Some(None));
        assert_eq!(parse_pool_flags(json, 4).ok(), Some(Some(Fullness::Quota)));
        assert_eq!(parse_pool_flags(json, 5).ok(), Some(Some(Fullness::Space)));
        assert_eq!(parse_pool_flags(json, 6).ok(), Some(None));
        let missing = parse_pool_flags(json, 9).err().map(|e| e.kind());
        assert_eq!(missing, Some(ErrorKind::NotFound));
        let bad = parse_pool_flags(b"{", 1).err().map(|e| e.kind());
        assert_eq!(bad, Some(ErrorKind::Corrupt));
    }
}

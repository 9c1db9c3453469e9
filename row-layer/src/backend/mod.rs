//! The storage-backend contract: a small, RADOS-shaped object store.
//!
//! row-layer needs only what RADOS offers a single client, so that the same
//! engine runs on a Ceph pool, on a local directory and in memory. The
//! contract below is what the engine's crash argument (docs/DESIGN.md) relies
//! on; every backend must pass `conformance::run_all`.
//!
//! # Objects
//! A backend instance is one flat namespace of objects (a RADOS pool plus
//! namespace). An object has a byte payload, an ordered string-keyed omap and
//! string-named xattrs, and a version that increases with every successful
//! mutation. An object exists once any mutation created it and until it is
//! removed.
//!
//! # Atomicity
//! [`Backend::operate`] applies a [`WriteOp`] atomically: its guards are checked
//! first; if any fails, the call returns `PreconditionFailed` (or `NotFound` /
//! `AlreadyExists` for existence guards) and nothing is applied. Otherwise all
//! of its actions are applied, in order, all or nothing, also across a crash.
//!
//! # Visibility and ordering
//! A mutation whose future completed successfully is visible to every later
//! read through any handle of the same backend. Mutations whose futures are
//! outstanding at the same time may be applied in any order; the engine never
//! relies on the order of concurrent mutations of the same object.
//!
//! # Durability
//! A completed mutation is durable once a later [`Backend::flush`] completes
//! (on RADOS every completed mutation is already durable and `flush` is free).
//! After a crash each completed-but-unflushed mutation may independently be
//! present or absent (but never partially applied); the fault-injecting
//! backend tests the engine against exactly that model.
//!
//! # Zeroing
//! As in RADOS, [`Action::Zero`] of a range that reaches the end of the object
//! truncates the object to the start of the range instead of writing zeros.
//! Reads past the end of an object return short (possibly empty) buffers; the
//! engine treats missing bytes as zeros.

pub mod conformance;
pub mod ext;
pub mod fault;
pub mod guards;
pub mod local;
pub mod mem;
mod sparse;

use crate::error::Result;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::time::Duration;

/// Size and version of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStat {
    /// Payload length in bytes.
    pub size: u64,
    /// Increases with every successful mutation of the object.
    pub version: u64,
}

/// A condition checked before any action of a [`WriteOp`] is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The object must exist (`NotFound` otherwise).
    Exists,
    /// The object must not exist (`AlreadyExists` otherwise).
    NotExists,
    /// The xattr must exist and equal the value.
    XattrEquals(String, Bytes),
    /// The object's version must equal this value (0 = does not exist).
    VersionEquals(u64),
}

/// One mutation inside a [`WriteOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Creates the object if missing (no-op otherwise).
    Create,
    /// Writes `data` at `offset`, extending the object as needed.
    Write {
        /// Byte offset in the object.
        offset: u64,
        /// Bytes to write.
        data: Bytes,
    },
    /// Replaces the whole payload.
    WriteFull(Bytes),
    /// Zeroes `[offset, offset+len)`; truncates instead if the range reaches the end.
    Zero {
        /// Byte offset in the object.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Sets the payload length.
    Truncate(u64),
    /// Sets omap keys.
    OmapSet(Vec<(String, Bytes)>),
    /// Removes omap keys (missing keys are ignored).
    OmapRemove(Vec<String>),
    /// Removes every omap key.
    OmapClear,
    /// Sets an xattr.
    SetXattr(String, Bytes),
    /// Removes an xattr (missing is ignored).
    RemoveXattr(String),
    /// Removes the object (missing is an error only without other actions; see
    /// [`WriteOp::remove`]).
    Remove,
}

/// An atomic compound mutation of one object: guards, then actions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOp {
    /// Checked first; any failure aborts the whole op.
    pub guards: Vec<Guard>,
    /// Applied in order, atomically.
    pub actions: Vec<Action>,
}

impl WriteOp {
    /// An empty op.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a guard.
    pub fn guard(mut self, g: Guard) -> Self {
        self.guards.push(g);
        self
    }
    /// Adds an action.
    pub fn action(mut self, a: Action) -> Self {
        self.actions.push(a);
        self
    }
    /// Writes `data` at `offset`.
    pub fn write(self, offset: u64, data: Bytes) -> Self {
        self.action(Action::Write { offset, data })
    }
    /// Replaces the payload.
    pub fn write_full(self, data: Bytes) -> Self {
        self.action(Action::WriteFull(data))
    }
    /// Sets one omap key.
    pub fn omap_set1(self, key: impl Into<String>, value: Bytes) -> Self {
        self.action(Action::OmapSet(vec![(key.into(), value)]))
    }
    /// Removes the object; with no other guard it is idempotent.
    pub fn remove() -> Self {
        WriteOp::new().action(Action::Remove)
    }
    /// Whether the op only removes the object.
    pub fn is_pure_remove(&self) -> bool {
        self.guards.is_empty() && self.actions == [Action::Remove]
    }
}

/// Identity of an exclusive-lock holder, as RADOS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOwner {
    /// The client entity (`client.4123`) or process identity.
    pub client: String,
    /// The cookie the holder chose.
    pub cookie: String,
    /// The holder's network address, when known.
    pub address: String,
}

/// A notification delivered to a watcher.
#[derive(Debug)]
pub struct Notification {
    /// The notifier's payload.
    pub payload: Bytes,
    /// Send the reply payload here; dropping it acknowledges with an empty reply.
    pub reply: tokio::sync::oneshot::Sender<Bytes>,
}

/// A registered watch on an object; notifications arrive on `events`.
#[derive(Debug)]
pub struct Watch {
    /// Backend-specific id, passed to [`Backend::unwatch`].
    pub id: u64,
    /// Incoming notifications.
    pub events: tokio::sync::mpsc::UnboundedReceiver<Notification>,
}

/// The object-store contract (see the module docs for atomicity, ordering
/// and durability). Object-safe: the engine holds an `Arc<dyn Backend>`.
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs and metrics ("mem", "local", "rados").
    fn kind(&self) -> &'static str;

    /// Reads up to `len` bytes at `offset`; short at the end of the object.
    /// `NotFound` if the object does not exist.
    fn read(&self, oid: &str, offset: u64, len: u64) -> BoxFuture<'_, Result<Bytes>>;

    /// Size and version; `NotFound` if absent.
    fn stat(&self, oid: &str) -> BoxFuture<'_, Result<ObjectStat>>;

    /// Up to `max` omap entries with keys `> start_after` that begin with
    /// `prefix`, in key order. `NotFound` if the object does not exist.
    fn omap_get(
        &self,
        oid: &str,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, Bytes)>>>;

    /// One xattr; `Ok(None)` if the object exists without it, `NotFound` if
    /// the object does not exist.
    fn get_xattr(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Option<Bytes>>>;

    /// Applies a compound op atomically (see module docs).
    fn operate(&self, oid: &str, op: WriteOp) -> BoxFuture<'_, Result<()>>;

    /// Names of all objects starting with `prefix`, in any order.
    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<String>>>;

    /// Makes every mutation completed before this call durable.
    fn flush(&self) -> BoxFuture<'_, Result<()>>;

    /// Takes the exclusive advisory lock `name` on `oid` for `cookie`
    /// (`Busy` when another holder has it; re-taking one's own lock succeeds).
    /// Creates the object if missing.
    fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        description: &str,
    ) -> BoxFuture<'_, Result<()>>;

    /// Releases a lock this handle holds (`NotFound` if not held).
    fn unlock(&self, oid: &str, name: &str, cookie: &str) -> BoxFuture<'_, Result<()>>;

    /// Current holders of lock `name`.
    fn lock_owners(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Vec<LockOwner>>>;

    /// Breaks another holder's lock.
    fn break_lock(&self, oid: &str, name: &str, owner: &LockOwner) -> BoxFuture<'_, Result<()>>;

    /// Starts watching `oid` (which must exist).
    fn watch(&self, oid: &str) -> BoxFuture<'_, Result<Watch>>;

    /// Stops a watch.
    fn unwatch(&self, watch_id: u64) -> BoxFuture<'_, Result<()>>;

    /// Fences the client holding `owner` so that none of its operations can
    /// take effect any more (RADOS: `osd blocklist add` of its address).
    /// In-process backends have one client per process and fence nothing:
    /// there the owner-xattr guard stops a stale handle's metadata commits.
    fn fence(&self, owner: &LockOwner) -> BoxFuture<'_, Result<()>>;

    /// Sends `payload` to every watcher of `oid` and collects their replies
    /// (watchers that do not answer within `timeout` are left out).
    fn notify(
        &self,
        oid: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<Bytes>>>;

    /// [`Backend::notify`], also telling how many watchers received the
    /// notification but did not answer in time: `Some(0)` with no replies
    /// means it reached nobody. `None` if the backend cannot tell (the
    /// default).
    fn notify_counting_timeouts(
        &self,
        oid: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(Vec<Bytes>, Option<usize>)>> {
        let sent = self.notify(oid, payload, timeout);
        Box::pin(async move { Ok((sent.await?, None)) })
    }
}

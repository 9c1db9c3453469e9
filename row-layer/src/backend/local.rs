//! The embedded local backend: one [redb] database file in a directory.
//!
//! This is the default store when there is no Ceph cluster (a laptop, a CI
//! box): the same engine, the same crash argument, a single file
//! `<dir>/store.redb`. It implements the backend contract of the parent
//! module exactly, including its crash model.
//!
//! # Format
//! redb is a copy-on-write B-tree store whose commits are atomic, so every
//! table below changes together or not at all. All keys and values are raw
//! bytes that this module encodes and decodes itself; anything that does not
//! decode is reported as `Corrupt` with the object name, never a panic.
//!
//! | table   | key                          | value                                  |
//! |---------|------------------------------|----------------------------------------|
//! | `info`  | `"format"`, `"chunk_size"`   | format byte; chunk size (u64 LE)       |
//! | `meta`  | object name                  | format byte, size, version (u64 LE)    |
//! | `data`  | (object name, chunk index)   | chunk bytes, trailing zeros trimmed    |
//! | `omap`  | (object name, omap key)      | value                                  |
//! | `xattr` | (object name, xattr name)    | value                                  |
//! | `locks` | (object name, lock name)     | format byte + postcard lock record     |
//!
//! An object exists iff it has a `meta` row. Payloads are cut into fixed
//! [`CHUNK_SIZE`] chunks so that a small write rewrites at most two chunks and
//! sparse objects cost nothing: an absent chunk, and the bytes past the end of
//! a stored chunk, read as zeros. Chunks that would be all zeros are deleted,
//! and no chunk ever holds bytes past the object's size (truncation trims
//! them), so growing an object by truncation exposes zeros, never stale data.
//! Per-object rows of `omap`/`xattr`/`locks` are found by a range scan from
//! `(name, "")` up to `(name ++ 0x00, "")`, the next possible object name.
//!
//! # Durability mapping
//! Each [`Backend::operate`] is one redb write transaction committed with
//! [`Durability::None`]: it is atomic and visible to every later read as soon
//! as the commit returns, but it costs no fsync. [`Backend::flush`] commits an
//! empty transaction with [`Durability::Immediate`], which persists it together
//! with every earlier non-durable commit. After a crash redb reopens at the last
//! durable commit (repairing its allocator), so every flushed mutation is there
//! and unflushed mutations are lost whole, never partially: a stricter model
//! than the contract's "each may independently be present or absent". Flush
//! commits use redb's quick-repair mode (allocator state saved with the commit,
//! two-phase commit), so reopening after a crash does not walk the whole file;
//! [`LocalOptions::quick_repair`] trades that for one fewer fsync per flush.
//! Non-durable commits cannot reuse pages freed since the last durable commit,
//! so a writer that never flushes makes the file grow; the engine flushes.
//!
//! Locks are rows in the store, so they persist like RADOS locks do and a
//! holder that died must be broken by the next one ([`Backend::break_lock`]).
//! The holder's identity is `client.local.<pid>` at address `local:<pid>`,
//! where `<pid>` is the process that made the call (also through the proxy
//! below). A lock held by anyone else is `Busy`; whether its holder is dead is
//! the engine's business (its ownership protocol pings the holder through a
//! notification on the image header and fences and breaks a silent one).
//!
//! # Several processes
//! redb lets only one process open a database file, so the first process that
//! opens a directory becomes its *store server*: it opens the file and also
//! listens on the Unix socket `<dir>/store.sock` (a stale socket file nobody
//! answers on is replaced). A later process whose open finds the file already
//! open connects to that socket instead and gets a handle in *client mode*
//! that sends every [`Backend`] call to the server and gets its answer there
//! (many calls in flight on one connection per process). Both kinds of handle
//! behave the same, and the contract holds across processes:
//! - watch/notify is shared: a client's watch registers with the server, which
//!   pushes notifications to it over its connection and carries its reply
//!   back; a notify from any process reaches the watchers of every process;
//! - locks are taken in the name of the calling process. When a client's
//!   connection drops, its watches go (so it stops answering liveness pings
//!   and its images can be taken over) but its locks stay, as on RADOS;
//! - [`Backend::fence`] of a process marks it fenced on the server: every
//!   later request of that process fails with `Fenced` and its watches go.
//!   Fencing the calling process itself is a no-op (in one process the
//!   owner-xattr guard stops a stale handle), and the server process cannot
//!   be fenced (`Busy`);
//! - a client's calls that are in flight when the server process exits fail
//!   with `Io` ("local store server went away"); its next call first
//!   reconnects to a new server or, if the database file is free (the dead
//!   server's file lock is released by the kernel), opens it and becomes the
//!   server itself. Watches of the lost connection are gone; locks persist.
//!
//! Make the long-running process (the gateway) the first to open a store, so
//! that it is the server and short-lived processes (the CLI) are its clients.
//! One process holds at most one handle of a directory (lock holders are
//! named by process): a second `open` in the same process fails with `Busy`.
//! The wire format (`local_proxy.rs`) is length-prefixed frames of
//! [`crate::envelope`] records (postcard, one magic per message kind, crc32c),
//! at most 64 MiB each.
//!
//! redb's API is blocking, so every call runs on tokio's blocking pool
//! (`spawn_blocking`); the returned futures must be polled inside a tokio
//! runtime.

use super::{Action, Backend, LockOwner, Notification, ObjectStat, Watch, WriteOp};
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Fixed payload chunk size of the on-disk format (64 KiB).
pub const CHUNK_SIZE: u64 = 64 * 1024;
/// Name of the database file inside the store directory.
pub const DB_FILE: &str = "store.redb";

const FORMAT: u8 = 1;
const LOCK_FORMAT: u8 = 1;
const META_LEN: usize = 17;
/// `usize` view of [`CHUNK_SIZE`] (64 KiB fits every platform's `usize`).
const CHUNK: usize = 64 * 1024;

type Raw = &'static [u8];
const INFO: TableDefinition<Raw, Raw> = TableDefinition::new("info");
const META: TableDefinition<Raw, Raw> = TableDefinition::new("meta");
const DATA: TableDefinition<(Raw, u64), Raw> = TableDefinition::new("data");
const OMAP: TableDefinition<(Raw, Raw), Raw> = TableDefinition::new("omap");
const XATTR: TableDefinition<(Raw, Raw), Raw> = TableDefinition::new("xattr");
const LOCKS: TableDefinition<(Raw, Raw), Raw> = TableDefinition::new("locks");

#[path = "local_proxy.rs"]
mod local_proxy;

/// Tuning knobs of [`LocalBackend::open_with`].
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Save redb's allocator state with every flush (two fsyncs per flush
    /// instead of one) so that reopening after a crash is immediate instead of
    /// a walk of the whole file. Default: true.
    pub quick_repair: bool,
    /// Page cache size in bytes. Default: 256 MiB.
    pub cache_size: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            quick_repair: true,
            cache_size: 256 * 1024 * 1024,
        }
    }
}

/// Converts redb errors into row-layer errors with context.
trait RedbExt<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<redb::Error>> RedbExt<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| {
            let e: redb::Error = e.into();
            let kind = match &e {
                redb::Error::Corrupted(_) => ErrorKind::Corrupt,
                redb::Error::ValueTooLarge(_) => ErrorKind::InvalidInput,
                redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                    ErrorKind::Busy
                }
                _ => ErrorKind::Io,
            };
            Error::new(kind, format!("local store: {}: {e}", what()))
        })
    }
}

fn missing(oid: &str) -> Error {
    Error::not_found(format!("object {oid} does not exist"))
}

fn corrupt(oid: &str, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("local store: object {oid}: {what}"))
}

/// Size and version as stored in the `meta` table.
#[derive(Debug, Clone, Copy)]
struct Meta {
    size: u64,
    version: u64,
}

impl Meta {
    fn encode(self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0] = FORMAT;
        b[1..9].copy_from_slice(&self.size.to_le_bytes());
        b[9..17].copy_from_slice(&self.version.to_le_bytes());
        b
    }

    fn decode(oid: &str, b: &[u8]) -> Result<Meta> {
        let b: &[u8; META_LEN] = b.try_into().map_err(|_| {
            corrupt(
                oid,
                format!("metadata is {} bytes, not {META_LEN}", b.len()),
            )
        })?;
        if b[0] != FORMAT {
            return Err(corrupt(oid, format!("unknown metadata format {}", b[0])));
        }
        let mut size = [0u8; 8];
        let mut version = [0u8; 8];
        size.copy_from_slice(&b[1..9]);
        version.copy_from_slice(&b[9..17]);
        Ok(Meta {
            size: u64::from_le_bytes(size),
            version: u64::from_le_bytes(version),
        })
    }
}

/// A lock holder as stored in the `locks` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LockRecord {
    client: String,
    cookie: String,
    address: String,
    description: String,
}

impl LockRecord {
    fn encode(&self, oid: &str) -> Result<Vec<u8>> {
        let mut out = vec![LOCK_FORMAT];
        let body = postcard::to_allocvec(self)
            .map_err(|e| Error::io(format!("local store: encoding lock on {oid}: {e}")))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn decode(oid: &str, b: &[u8]) -> Result<LockRecord> {
        match b.split_first() {
            Some((&LOCK_FORMAT, body)) => postcard::from_bytes(body)
                .map_err(|e| corrupt(oid, format!("lock record does not decode: {e}"))),
            Some((f, _)) => Err(corrupt(oid, format!("unknown lock record format {f}"))),
            None => Err(corrupt(oid, "empty lock record")),
        }
    }

    fn owner(&self) -> LockOwner {
        LockOwner {
            client: self.client.clone(),
            cookie: self.cookie.clone(),
            address: self.address.clone(),
        }
    }
}

/// The smallest object name that sorts after `name` (`name ++ 0x00`): the
/// exclusive upper bound of `name`'s rows in the pair-keyed tables.
fn successor(name: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(name.len() + 1);
    s.extend_from_slice(name);
    s.push(0);
    s
}

fn decode_str(oid: &str, what: &str, b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| corrupt(oid, format!("{what} is not UTF-8")))
}

fn get_meta(t: &impl ReadableTable<Raw, Raw>, oid: &str) -> Result<Option<Meta>> {
    let g = t
        .get(oid.as_bytes())
        .ctx(|| format!("reading metadata of {oid}"))?;
    g.map(|g| Meta::decode(oid, g.value())).transpose()
}

fn get_pair(
    t: &impl ReadableTable<(Raw, Raw), Raw>,
    oid: &str,
    name: &str,
    what: &str,
) -> Result<Option<Vec<u8>>> {
    let g = t
        .get((oid.as_bytes(), name.as_bytes()))
        .ctx(|| format!("reading {what} {name} of {oid}"))?;
    Ok(g.map(|g| g.value().to_vec()))
}

/// The write-side tables of one transaction.
struct Tables<'t> {
    meta: Table<'t, Raw, Raw>,
    data: Table<'t, (Raw, u64), Raw>,
    omap: Table<'t, (Raw, Raw), Raw>,
    xattr: Table<'t, (Raw, Raw), Raw>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(Tables {
            meta: txn.open_table(META).ctx(|| "opening meta".into())?,
            data: txn.open_table(DATA).ctx(|| "opening data".into())?,
            omap: txn.open_table(OMAP).ctx(|| "opening omap".into())?,
            xattr: txn.open_table(XATTR).ctx(|| "opening xattr".into())?,
        })
    }

    fn load_chunk(&self, oid: &str, idx: u64) -> Result<Vec<u8>> {
        let g = self
            .data
            .get((oid.as_bytes(), idx))
            .ctx(|| format!("reading chunk {idx} of {oid}"))?;
        match g {
            None => Ok(Vec::new()),
            Some(g) => {
                let v = g.value();
                if v.len() > CHUNK {
                    return Err(corrupt(oid, format!("chunk {idx} is {} bytes", v.len())));
                }
                Ok(v.to_vec())
            }
        }
    }

    /// Stores `buf` as chunk `idx`, trimming trailing zeros (absent = zeros).
    fn store_chunk(&mut self, oid: &str, idx: u64, buf: &[u8]) -> Result<()> {
        let used = buf.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        let key = (oid.as_bytes(), idx);
        if used == 0 {
            self.data
                .remove(key)
                .ctx(|| format!("removing chunk {idx} of {oid}"))?;
        } else {
            self.data
                .insert(key, &buf[..used])
                .ctx(|| format!("writing chunk {idx} of {oid}"))?;
        }
        Ok(())
    }

    /// Removes chunks `first..` of `oid`.
    fn drop_chunks_from(&mut self, oid: &str, first: u64) -> Result<()> {
        let k = oid.as_bytes();
        self.data
            .retain_in((k, first)..=(k, u64::MAX), |_, _| false)
            .ctx(|| format!("removing chunks of {oid}"))
    }

    fn clear_pairs(t: &mut Table<'t, (Raw, Raw), Raw>, oid: &str, what: &str) -> Result<()> {
        let k = oid.as_bytes();
        let end = successor(k);
        let empty: &[u8] = &[];
        t.retain_in((k, empty)..(end.as_slice(), empty), |_, _| false)
            .ctx(|| format!("clearing {what} of {oid}"))
    }

    fn write(&mut self, oid: &str, size: &mut u64, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| Error::invalid(format!("write to {oid} at {offset} overflows")))?;
        let mut pos = offset;
        let mut src = data;
        while pos < end {
            let idx = pos / CHUNK_SIZE;
            let in_off = (pos % CHUNK_SIZE) as usize;
            let n = (CHUNK - in_off).min(src.len());
            let (head, rest) = src.split_at(n);
            if in_off == 0 && n == CHUNK {
                self.store_chunk(oid, idx, head)?;
            } else {
                let mut buf = self.load_chunk(oid, idx)?;
                if buf.len() < in_off + n {
                    buf.resize(in_off + n, 0);
                }
                buf[in_off..in_off + n].copy_from_slice(head);
                self.store_chunk(oid, idx, &buf)?;
            }
            pos += n as u64;
            src = rest;
        }
        *size = (*size).max(end);
        Ok(())
    }

    fn truncate(&mut self, oid: &str, size: &mut u64, new: u64) -> Result<()> {
        if new < *size {
            self.drop_chunks_from(oid, new.div_ceil(CHUNK_SIZE))?;
            let tail = (new % CHUNK_SIZE) as usize;
            if tail != 0 {
                let idx = new / CHUNK_SIZE;
                let mut buf = self.load_chunk(oid, idx)?;
                if buf.len() > tail {
                    buf.truncate(tail);
                    self.store_chunk(oid, idx, &buf)?;
                }
            }
        }
        *size = new;
        Ok(())
    }

    fn zero(&mut self, oid: &str, size: &mut u64, offset: u64, len: u64) -> Result<()> {
        if offset >= *size {
            return Ok(());
        }
        let end = offset.saturating_add(len);
        if end >= *size {
            return self.truncate(oid, size, offset);
        }
        let mut pos = offset;
        while pos < end {
            let idx = pos / CHUNK_SIZE;
            let in_off = (pos % CHUNK_SIZE) as usize;
            let n = (CHUNK - in_off).min(usize::try_from(end - pos).unwrap_or(usize::MAX));
            if in_off == 0 && n == CHUNK {
                self.store_chunk(oid, idx, &[])?;
            } else {
                let mut buf = self.load_chunk(oid, idx)?;
                if buf.len() > in_off {
                    let stop = (in_off + n).min(buf.len());
                    buf[in_off..stop].fill(0);
                    self.store_chunk(oid, idx, &buf)?;
                }
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Deletes every row of `oid` except its lock rows.
    fn purge(&mut self, oid: &str) -> Result<()> {
        self.drop_chunks_from(oid, 0)?;
        Self::clear_pairs(&mut self.omap, oid, "omap")?;
        Self::clear_pairs(&mut self.xattr, oid, "xattrs")?;
        self.meta
            .remove(oid.as_bytes())
            .ctx(|| format!("removing metadata of {oid}"))?;
        Ok(())
    }

    /// Applies `op` with the contract's semantics (those of `mem::apply`).
    /// Returns whether anything changed. On error the caller must abort the
    /// transaction: some rows may already have been modified.
    fn apply(&mut self, oid: &str, op: &WriteOp) -> Result<bool> {
        let existing = get_meta(&self.meta, oid)?;
        super::guards::check(
            oid,
            &op.guards,
            super::guards::GuardView {
                exists: existing.is_some(),
                version: existing.as_ref().map_or(0, |m| m.version),
                xattr: |name: &str| Ok(get_pair(&self.xattr, oid, name, "xattr")?.map(Bytes::from)),
            },
        )?;
        if op.actions.is_empty() {
            return Ok(false);
        }
        let version = existing.map_or(0, |m| m.version) + 1;
        // `None` = the object does not exist at this point of the op.
        let mut state = existing.map(|m| m.size);
        for a in &op.actions {
            if let Action::Remove = a {
                if state.is_none() && op.actions.len() == 1 && !op.guards.is_empty() {
                    return Err(missing(oid));
                }
                if state.is_some() {
                    self.purge(oid)?;
                }
                state = None;
                continue;
            }
            let size = state.get_or_insert(0);
            match a {
                Action::Create | Action::Remove => {}
                Action::Write { offset, data } => self.write(oid, size, *offset, data)?,
                Action::WriteFull(data) => {
                    self.truncate(oid, size, 0)?;
                    self.write(oid, size, 0, data)?;
                }
                Action::Zero { offset, len } => self.zero(oid, size, *offset, *len)?,
                Action::Truncate(new) => self.truncate(oid, size, *new)?,
                Action::OmapSet(kvs) => {
                    for (k, v) in kvs {
                        self.omap
                            .insert((oid.as_bytes(), k.as_bytes()), v.as_ref())
                            .ctx(|| format!("setting omap key {k} of {oid}"))?;
                    }
                }
                Action::OmapRemove(keys) => {
                    for k in keys {
                        self.omap
                            .remove((oid.as_bytes(), k.as_bytes()))
                            .ctx(|| format!("removing omap key {k} of {oid}"))?;
                    }
                }
                Action::OmapClear => Self::clear_pairs(&mut self.omap, oid, "omap")?,
                Action::SetXattr(k, v) => {
                    self.xattr
                        .insert((oid.as_bytes(), k.as_bytes()), v.as_ref())
                        .ctx(|| format!("setting xattr {k} of {oid}"))?;
                }
                Action::RemoveXattr(k) => {
                    self.xattr
                        .remove((oid.as_bytes(), k.as_bytes()))
                        .ctx(|| format!("removing xattr {k} of {oid}"))?;
                }
            }
        }
        match state {
            Some(size) => {
                self.meta
                    .insert(oid.as_bytes(), Meta { size, version }.encode().as_slice())
                    .ctx(|| format!("writing metadata of {oid}"))?;
            }
            None => {
                self.meta
                    .remove(oid.as_bytes())
                    .ctx(|| format!("removing metadata of {oid}"))?;
            }
        }
        Ok(true)
    }
}

/// The open database and the state every client of it shares: the watch
/// registry and the fenced processes. Owned by the store server (the process
/// that opened the file); dropped when the last in-flight blocking call
/// finishes, which closes the file.
struct Store {
    db: Database,
    dir: PathBuf,
    quick_repair: bool,
    /// The process that has the database open (the store server).
    pid: u32,
    watchers: Mutex<Watchers>,
    /// Processes fenced with [`Backend::fence`]: every later request of
    /// theirs fails with `Fenced`.
    fenced: Mutex<HashSet<u32>>,
}

/// Directories this process has a handle of (redb's file lock may not
/// exclude a second open from the same process on every platform, and lock
/// holders are named by process, so one handle per process and directory).
static OPEN_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn open_dirs() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    lock_or_recover(&OPEN_DIRS)
}

fn lock_or_recover<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

struct Registration(PathBuf);

impl Registration {
    fn take(dir: &Path) -> Result<Self> {
        let mut dirs = open_dirs();
        if dirs.iter().any(|d| d == dir) {
            return Err(Error::busy(format!(
                "local store {} is already open in this process; use one handle per \
                 process (lock holders are named by process)",
                dir.display()
            )));
        }
        dirs.push(dir.to_path_buf());
        Ok(Registration(dir.to_path_buf()))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        open_dirs().retain(|d| d != &self.0);
    }
}

/// Opens the database in `dir` as the store server of this process.
/// `Ok(None)`: another process has it open (connect to its server instead).
fn open_db(dir: &Path, options: &LocalOptions, pid: u32) -> Result<Option<Store>> {
    let path = dir.join(DB_FILE);
    let db = match redb::Builder::new()
        .set_cache_size(options.cache_size)
        .create(&path)
    {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen)
        | Err(redb::DatabaseError::LockProtocolMismatch) => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("opening {}", path.display())),
    };
    init_format(&db, &path)?;
    Ok(Some(Store {
        db,
        dir: dir.to_path_buf(),
        quick_repair: options.quick_repair,
        pid,
        watchers: Mutex::new(Watchers::default()),
        fenced: Mutex::new(HashSet::new()),
    }))
}

/// A registered watch: the object, where notifications go, and the process
/// that registered it (removed when that process is fenced).
struct WatchEntry {
    oid: String,
    tx: tokio::sync::mpsc::UnboundedSender<Notification>,
    pid: u32,
}

#[derive(Default)]
struct Watchers {
    next: u64,
    by_id: HashMap<u64, WatchEntry>,
}

/// The lock-holder name of process `pid`.
fn client_name(pid: u32) -> String {
    format!("client.local.{pid}")
}

/// The lock-holder address of process `pid`.
fn client_address(pid: u32) -> String {
    format!("local:{pid}")
}

/// The process a local-store lock owner names.
fn owner_pid(owner: &LockOwner) -> Result<u32> {
    owner
        .address
        .strip_prefix("local:")
        .or_else(|| owner.client.strip_prefix("client.local."))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| {
            Error::invalid(format!(
                "lock owner {} at {} is not a local-store client",
                owner.client, owner.address
            ))
        })
}

/// One call of the [`Backend`] API, by value: what a handle executes on the
/// database directly (store server) or sends to the server (client mode).
#[derive(Debug)]
enum Call {
    Read {
        oid: String,
        offset: u64,
        len: u64,
    },
    Stat {
        oid: String,
    },
    OmapGet {
        oid: String,
        start_after: String,
        prefix: String,
        max: usize,
    },
    GetXattr {
        oid: String,
        name: String,
    },
    Operate {
        oid: String,
        op: WriteOp,
    },
    List {
        prefix: String,
    },
    Flush,
    Lock {
        oid: String,
        name: String,
        cookie: String,
        description: String,
    },
    Unlock {
        oid: String,
        name: String,
        cookie: String,
    },
    LockOwners {
        oid: String,
        name: String,
    },
    BreakLock {
        oid: String,
        name: String,
        owner: LockOwner,
    },
    Watch {
        oid: String,
    },
    Unwatch {
        id: u64,
    },
    Fence {
        owner: LockOwner,
    },
    Notify {
        oid: String,
        payload: Bytes,
        timeout: Duration,
    },
}

/// The result of a [`Call`].
#[derive(Debug)]
enum Answer {
    Unit,
    Data(Bytes),
    Stat(ObjectStat),
    Omap(Vec<(String, Bytes)>),
    Xattr(Option<Bytes>),
    Names(Vec<String>),
    Owners(Vec<LockOwner>),
    Watch(Watch),
    Replies(Vec<Bytes>),
}

fn unexpected(what: &str, a: Answer) -> Error {
    Error::io(format!("local store: unexpected answer to {what}: {a:?}"))
}

/// The embedded local backend (see the module docs). A handle is either the
/// store server of its directory (it has the database open) or a client of
/// the process that is; a client whose server went away reconnects to a new
/// server or becomes the server itself.
pub struct LocalBackend {
    dir: PathBuf,
    options: LocalOptions,
    pid: u32,
    link: Mutex<local_proxy::Link>,
    /// Serialises reconnect-or-take-over after the server went away.
    recovery: tokio::sync::Mutex<()>,
    // Last: released after the link (and with it the database) is dropped.
    _registration: Registration,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("dir", &self.dir)
            .field("client", &client_name(self.pid))
            .field("serves_store", &self.serves_store())
            .finish_non_exhaustive()
    }
}

impl LocalBackend {
    /// Opens (creating if needed) the store in `dir` with default options.
    /// Blocks while redb opens the file, which includes crash recovery, or
    /// while connecting to the process that has it open.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, LocalOptions::default())
    }

    /// Opens (creating if needed) the store in `dir`: as its server if no
    /// other process has it open, otherwise as a client of that process.
    /// A second handle of the same directory in one process is refused
    /// with `Busy`.
    pub fn open_with(dir: &Path, options: LocalOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::io(format!(
                "local store: creating directory {}: {e}",
                dir.display()
            ))
        })?;
        let dir = dir.canonicalize().map_err(|e| {
            Error::io(format!(
                "local store: resolving directory {}: {e}",
                dir.display()
            ))
        })?;
        let registration = Registration::take(&dir)?;
        let pid = std::process::id();
        let link = local_proxy::establish(&dir, &options, pid)?;
        Ok(LocalBackend {
            dir,
            options,
            pid,
            link: Mutex::new(link),
            recovery: tokio::sync::Mutex::new(()),
            _registration: registration,
        })
    }

    /// The (canonical) store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this handle has the database open itself (it is the store
    /// server of its directory) rather than proxying to another process.
    pub fn serves_store(&self) -> bool {
        matches!(*lock_or_recover(&self.link), local_proxy::Link::Server(_))
    }

    /// Executes `call` directly or through the store server.
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Answer>> {
        local_proxy::call(self, call).boxed()
    }
}

impl Store {
    fn watchers(&self) -> std::sync::MutexGuard<'_, Watchers> {
        lock_or_recover(&self.watchers)
    }

    fn is_fenced(&self, pid: u32) -> bool {
        lock_or_recover(&self.fenced).contains(&pid)
    }

    fn add_watch(
        &self,
        oid: String,
        tx: tokio::sync::mpsc::UnboundedSender<Notification>,
        pid: u32,
    ) -> u64 {
        let mut w = self.watchers();
        w.next += 1;
        let id = w.next;
        w.by_id.insert(id, WatchEntry { oid, tx, pid });
        id
    }

    fn remove_watch(&self, id: u64) {
        self.watchers().by_id.remove(&id);
    }

    /// Fences process `owner` for requests made by process `caller`.
    fn fence(&self, owner: &LockOwner, caller: u32) -> Result<()> {
        let pid = owner_pid(owner)?;
        if pid == caller {
            // A stale handle of the caller's own process: the owner-xattr
            // guard stops its metadata commits; fencing would cut off the
            // caller itself.
            tracing::warn!(
                owner = %owner.client,
                "not fencing the calling process itself"
            );
            return Ok(());
        }
        if pid == self.pid {
            return Err(Error::busy(format!(
                "refusing to fence process {pid}: it is the local store server of {}",
                self.dir.display()
            )));
        }
        lock_or_recover(&self.fenced).insert(pid);
        self.watchers().by_id.retain(|_, w| w.pid != pid);
        tracing::warn!(pid, store = %self.dir.display(), "fenced a local store client");
        Ok(())
    }

    /// Runs `f` on the blocking pool with the database.
    fn blocking<T, F>(self: &Arc<Self>, f: F) -> BoxFuture<'static, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&store))
                .await
                .map_err(|e| Error::io(format!("local store: blocking task failed: {e}")))?
        }
        .boxed()
    }

    /// Runs `f` in a non-durable write transaction; commits if it returns
    /// `Ok(true)`, aborts otherwise.
    fn write_txn<F>(self: &Arc<Self>, what: String, f: F) -> BoxFuture<'static, Result<Answer>>
    where
        F: FnOnce(&WriteTransaction) -> Result<bool> + Send + 'static,
    {
        self.blocking(move |s| {
            let mut txn = s.db.begin_write().ctx(|| what.clone())?;
            txn.set_durability(Durability::None).ctx(|| what.clone())?;
            if f(&txn)? {
                txn.commit().ctx(|| format!("committing {what}"))?;
            } else {
                txn.abort().ctx(|| format!("aborting {what}"))?;
            }
            Ok(Answer::Unit)
        })
    }

    /// Runs `f` in a read transaction.
    fn read_txn<F>(self: &Arc<Self>, what: String, f: F) -> BoxFuture<'static, Result<Answer>>
    where
        F: FnOnce(&redb::ReadTransaction) -> Result<Answer> + Send + 'static,
    {
        self.blocking(move |s| {
            let txn = s.db.begin_read().ctx(|| what.clone())?;
            f(&txn)
        })
    }
}

fn init_format(db: &Database, path: &Path) -> Result<()> {
    let what = || format!("initialising {}", path.display());
    let txn = db.begin_write().ctx(what)?;
    {
        let mut info = txn.open_table(INFO).ctx(what)?;
        let format = info
            .get(b"format".as_slice())
            .ctx(what)?
            .map(|g| g.value().to_vec());
        match format.as_deref() {
            None => {
                info.insert(b"format".as_slice(), [FORMAT].as_slice())
                    .ctx(what)?;
                info.insert(
                    b"chunk_size".as_slice(),
                    CHUNK_SIZE.to_le_bytes().as_slice(),
                )
                .ctx(what)?;
            }
            Some([FORMAT]) => {
                let cs = info
                    .get(b"chunk_size".as_slice())
                    .ctx(what)?
                    .map(|g| g.value().to_vec());
                if cs.as_deref() != Some(CHUNK_SIZE.to_le_bytes().as_slice()) {
                    return Err(Error::corrupt(format!(
                        "local store {}: chunk size record {cs:?} is not {CHUNK_SIZE}",
                        path.display()
                    )));
                }
            }
            Some(other) => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "local store {}: unknown format {other:?} (this build reads {FORMAT})",
                        path.display()
                    ),
                ))
            }
        }
        // Create every table so that read transactions always find them.
        txn.open_table(META).ctx(what)?;
        txn.open_table(DATA).ctx(what)?;
        txn.open_table(OMAP).ctx(what)?;
        txn.open_table(XATTR).ctx(what)?;
        txn.open_table(LOCKS).ctx(what)?;
    }
    txn.commit().ctx(what)
}

impl Store {
    /// Executes `call` on the database for process `caller` (whose identity
    /// lock records carry).
    fn execute(self: &Arc<Self>, call: Call, caller: u32) -> BoxFuture<'static, Result<Answer>> {
        match call {
            Call::Read { oid, offset, len } => self
                .read_txn(format!("reading {oid}"), move |txn| {
                    read_object(txn, &oid, offset, len).map(Answer::Data)
                }),
            Call::Stat { oid } => self.read_txn(format!("stat of {oid}"), move |txn| {
                let meta_t = txn.open_table(META).ctx(|| "opening meta".into())?;
                let m = get_meta(&meta_t, &oid)?.ok_or_else(|| missing(&oid))?;
                Ok(Answer::Stat(ObjectStat {
                    size: m.size,
                    version: m.version,
                }))
            }),
            Call::OmapGet {
                oid,
                start_after,
                prefix,
                max,
            } => self.read_txn(format!("omap of {oid}"), move |txn| {
                omap_get(txn, &oid, &start_after, &prefix, max).map(Answer::Omap)
            }),
            Call::GetXattr { oid, name } => {
                self.read_txn(format!("xattr {name} of {oid}"), move |txn| {
                    let meta_t = txn.open_table(META).ctx(|| "opening meta".into())?;
                    let xattr_t = txn.open_table(XATTR).ctx(|| "opening xattr".into())?;
                    if get_meta(&meta_t, &oid)?.is_none() {
                        return Err(missing(&oid));
                    }
                    Ok(Answer::Xattr(
                        get_pair(&xattr_t, &oid, &name, "xattr")?.map(Bytes::from),
                    ))
                })
            }
            Call::Operate { oid, op } => self.write_txn(format!("operate on {oid}"), move |txn| {
                let mut t = Tables::open(txn)?;
                t.apply(&oid, &op)
            }),
            Call::List { prefix } => self.read_txn(format!("listing {prefix}"), move |txn| {
                list(txn, &prefix).map(Answer::Names)
            }),
            Call::Flush => self.blocking(|s| {
                let mut txn = s.db.begin_write().ctx(|| "flush".into())?;
                txn.set_durability(Durability::Immediate)
                    .ctx(|| "flush".into())?;
                txn.set_quick_repair(s.quick_repair);
                txn.commit().ctx(|| "durable commit (flush)".into())?;
                Ok(Answer::Unit)
            }),
            Call::Lock {
                oid,
                name,
                cookie,
                description,
            } => {
                let rec = LockRecord {
                    client: client_name(caller),
                    cookie,
                    address: client_address(caller),
                    description,
                };
                self.write_txn(format!("locking {name} on {oid}"), move |txn| {
                    lock_exclusive(txn, &oid, &name, &rec)
                })
            }
            Call::Unlock { oid, name, cookie } => {
                let client = client_name(caller);
                self.write_txn(format!("unlocking {name} on {oid}"), move |txn| {
                    let mut locks = txn.open_table(LOCKS).ctx(|| "opening locks".into())?;
                    let held = get_pair(&locks, &oid, &name, "lock")?
                        .map(|b| LockRecord::decode(&oid, &b))
                        .transpose()?;
                    match held {
                        Some(h) if h.cookie == cookie && h.client == client => {
                            locks
                                .remove((oid.as_bytes(), name.as_bytes()))
                                .ctx(|| format!("removing lock {name} on {oid}"))?;
                            Ok(true)
                        }
                        _ => Err(Error::not_found(format!(
                            "lock {name} on {oid} not held by {cookie}"
                        ))),
                    }
                })
            }
            Call::LockOwners { oid, name } => {
                self.read_txn(format!("lock owners of {name} on {oid}"), move |txn| {
                    let locks = txn.open_table(LOCKS).ctx(|| "opening locks".into())?;
                    let held = get_pair(&locks, &oid, &name, "lock")?;
                    held.map(|b| LockRecord::decode(&oid, &b).map(|r| r.owner()))
                        .into_iter()
                        .collect::<Result<Vec<_>>>()
                        .map(Answer::Owners)
                })
            }
            Call::BreakLock { oid, name, owner } => {
                self.write_txn(format!("breaking lock {name} on {oid}"), move |txn| {
                    let mut locks = txn.open_table(LOCKS).ctx(|| "opening locks".into())?;
                    let held = get_pair(&locks, &oid, &name, "lock")?
                        .map(|b| LockRecord::decode(&oid, &b))
                        .transpose()?;
                    match held {
                        Some(h) if h.owner() == owner => {
                            locks
                                .remove((oid.as_bytes(), name.as_bytes()))
                                .ctx(|| format!("removing lock {name} on {oid}"))?;
                            Ok(true)
                        }
                        _ => Err(Error::not_found(format!(
                            "lock {name} on {oid} not held by that owner"
                        ))),
                    }
                })
            }
            Call::Watch { oid } => {
                let exists = self.execute(Call::Stat { oid: oid.clone() }, caller);
                let store = self.clone();
                async move {
                    exists.await?;
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    let id = store.add_watch(oid, tx, caller);
                    Ok(Answer::Watch(Watch { id, events: rx }))
                }
                .boxed()
            }
            Call::Unwatch { id } => {
                self.remove_watch(id);
                futures::future::ready(Ok(Answer::Unit)).boxed()
            }
            Call::Fence { owner } => {
                futures::future::ready(self.fence(&owner, caller).map(|()| Answer::Unit)).boxed()
            }
            Call::Notify {
                oid,
                payload,
                timeout,
            } => self.notify(&oid, payload, timeout),
        }
    }

    fn notify(
        &self,
        oid: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Answer>> {
        let mut receivers = Vec::new();
        self.watchers().by_id.retain(|_, w| {
            if w.oid != oid {
                return true;
            }
            let (rtx, rrx) = tokio::sync::oneshot::channel();
            let delivered =
                w.tx.send(Notification {
                    payload: payload.clone(),
                    reply: rtx,
                })
                .is_ok();
            if delivered {
                receivers.push(rrx);
            }
            delivered
        });
        async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut replies = Vec::new();
            for rx in receivers {
                match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(reply)) => replies.push(reply),
                    Ok(Err(_dropped)) => replies.push(Bytes::new()),
                    Err(_timed_out) => {}
                }
            }
            Ok(Answer::Replies(replies))
        }
        .boxed()
    }
}

fn read_object(txn: &redb::ReadTransaction, oid: &str, offset: u64, len: u64) -> Result<Bytes> {
    let meta_t = txn.open_table(META).ctx(|| "opening meta".into())?;
    let data_t = txn.open_table(DATA).ctx(|| "opening data".into())?;
    let size = get_meta(&meta_t, oid)?.ok_or_else(|| missing(oid))?.size;
    let start = offset.min(size);
    let end = start.saturating_add(len).min(size);
    let n = usize::try_from(end - start)
        .map_err(|_| Error::invalid(format!("read of {oid}: length too large")))?;
    let mut out = vec![0u8; n];
    if n == 0 {
        return Ok(Bytes::from(out));
    }
    let k = oid.as_bytes();
    let range = data_t
        .range((k, start / CHUNK_SIZE)..=(k, (end - 1) / CHUNK_SIZE))
        .ctx(|| format!("reading chunks of {oid}"))?;
    for entry in range {
        let (key, value) = entry.ctx(|| format!("reading chunks of {oid}"))?;
        let idx = key.value().1;
        let chunk = value.value();
        let cstart = idx * CHUNK_SIZE;
        let cend = cstart + chunk.len() as u64;
        if chunk.len() > CHUNK || cend > size {
            return Err(corrupt(
                oid,
                format!("chunk {idx} ({} bytes) exceeds size {size}", chunk.len()),
            ));
        }
        let lo = cstart.max(start);
        let hi = cend.min(end);
        if lo < hi {
            out[(lo - start) as usize..(hi - start) as usize]
                .copy_from_slice(&chunk[(lo - cstart) as usize..(hi - cstart) as usize]);
        }
    }
    Ok(Bytes::from(out))
}

fn omap_get(
    txn: &redb::ReadTransaction,
    oid: &str,
    start_after: &str,
    prefix: &str,
    max: usize,
) -> Result<Vec<(String, Bytes)>> {
    let meta_t = txn.open_table(META).ctx(|| "opening meta".into())?;
    let omap_t = txn.open_table(OMAP).ctx(|| "opening omap".into())?;
    if get_meta(&meta_t, oid)?.is_none() {
        return Err(missing(oid));
    }
    let mut out = Vec::new();
    if max == 0 {
        return Ok(out);
    }
    let k = oid.as_bytes();
    let end = successor(k);
    let empty: &[u8] = &[];
    // Keys with the prefix form one contiguous run starting at the prefix
    // itself; start there or after `start_after`, whichever is later, and
    // stop at the first key without the prefix.
    let lower = if start_after >= prefix {
        std::ops::Bound::Excluded((k, start_after.as_bytes()))
    } else {
        std::ops::Bound::Included((k, prefix.as_bytes()))
    };
    let upper = std::ops::Bound::Excluded((end.as_slice(), empty));
    let range = omap_t
        .range((lower, upper))
        .ctx(|| format!("scanning omap of {oid}"))?;
    for entry in range {
        let (key, value) = entry.ctx(|| format!("scanning omap of {oid}"))?;
        let name = key.value().1;
        if !name.starts_with(prefix.as_bytes()) {
            break;
        }
        out.push((
            decode_str(oid, "omap key", name)?,
            Bytes::copy_from_slice(value.value()),
        ));
        if out.len() == max {
            break;
        }
    }
    Ok(out)
}

fn list(txn: &redb::ReadTransaction, prefix: &str) -> Result<Vec<String>> {
    let meta_t = txn.open_table(META).ctx(|| "opening meta".into())?;
    let p = prefix.as_bytes();
    let range = meta_t.range(p..).ctx(|| format!("listing {prefix}"))?;
    let mut out = Vec::new();
    for entry in range {
        let (key, _) = entry.ctx(|| format!("listing {prefix}"))?;
        let name = key.value();
        if !name.starts_with(p) {
            break;
        }
        out.push(decode_str(
            &String::from_utf8_lossy(name),
            "object name",
            name,
        )?);
    }
    Ok(out)
}

/// Takes lock `name` on `oid` for `rec`; `Ok(false)`: already held by `rec`.
/// A lock of any other holder is `Busy`, whether or not its process is
/// alive: several processes share the store, and the engine's liveness probe
/// (a notification on the image header) decides when a holder is dead and
/// may be fenced and broken.
fn lock_exclusive(txn: &WriteTransaction, oid: &str, name: &str, rec: &LockRecord) -> Result<bool> {
    let mut locks = txn.open_table(LOCKS).ctx(|| "opening locks".into())?;
    if let Some(b) = get_pair(&locks, oid, name, "lock")? {
        let held = LockRecord::decode(oid, &b)?;
        if held.cookie == rec.cookie && held.client == rec.client {
            return Ok(false);
        }
        return Err(Error::busy(format!(
            "lock {name} on {oid} is held by {} at {} (cookie {})",
            held.client, held.address, held.cookie
        )));
    }
    Tables::open(txn)?.apply(oid, &WriteOp::new().action(Action::Create))?;
    locks
        .insert(
            (oid.as_bytes(), name.as_bytes()),
            rec.encode(oid)?.as_slice(),
        )
        .ctx(|| format!("writing lock {name} on {oid}"))?;
    Ok(true)
}

impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn read(&self, oid: &str, offset: u64, len: u64) -> BoxFuture<'_, Result<Bytes>> {
        let call = self.call(Call::Read {
            oid: oid.to_string(),
            offset,
            len,
        });
        async move {
            match call.await? {
                Answer::Data(b) => Ok(b),
                a => Err(unexpected("read", a)),
            }
        }
        .boxed()
    }

    fn stat(&self, oid: &str) -> BoxFuture<'_, Result<ObjectStat>> {
        let call = self.call(Call::Stat {
            oid: oid.to_string(),
        });
        async move {
            match call.await? {
                Answer::Stat(s) => Ok(s),
                a => Err(unexpected("stat", a)),
            }
        }
        .boxed()
    }

    fn omap_get(
        &self,
        oid: &str,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, Bytes)>>> {
        let call = self.call(Call::OmapGet {
            oid: oid.to_string(),
            start_after: start_after.to_string(),
            prefix: prefix.to_string(),
            max,
        });
        async move {
            match call.await? {
                Answer::Omap(kvs) => Ok(kvs),
                a => Err(unexpected("omap_get", a)),
            }
        }
        .boxed()
    }

    fn get_xattr(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Option<Bytes>>> {
        let call = self.call(Call::GetXattr {
            oid: oid.to_string(),
            name: name.to_string(),
        });
        async move {
            match call.await? {
                Answer::Xattr(v) => Ok(v),
                a => Err(unexpected("get_xattr", a)),
            }
        }
        .boxed()
    }

    fn operate(&self, oid: &str, op: WriteOp) -> BoxFuture<'_, Result<()>> {
        let call = self.call(Call::Operate {
            oid: oid.to_string(),
            op,
        });
        unit(call, "operate")
    }

    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<String>>> {
        let call = self.call(Call::List {
            prefix: prefix.to_string(),
        });
        async move {
            match call.await? {
                Answer::Names(n) => Ok(n),
                a => Err(unexpected("list", a)),
            }
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        unit(self.call(Call::Flush), "flush")
    }

    fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        description: &str,
    ) -> BoxFuture<'_, Result<()>> {
        let call = self.call(Call::Lock {
            oid: oid.to_string(),
            name: name.to_string(),
            cookie: cookie.to_string(),
            description: description.to_string(),
        });
        unit(call, "lock_exclusive")
    }

    fn unlock(&self, oid: &str, name: &str, cookie: &str) -> BoxFuture<'_, Result<()>> {
        let call = self.call(Call::Unlock {
            oid: oid.to_string(),
            name: name.to_string(),
            cookie: cookie.to_string(),
        });
        unit(call, "unlock")
    }

    fn lock_owners(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Vec<LockOwner>>> {
        let call = self.call(Call::LockOwners {
            oid: oid.to_string(),
            name: name.to_string(),
        });
        async move {
            match call.await? {
                Answer::Owners(o) => Ok(o),
                a => Err(unexpected("lock_owners", a)),
            }
        }
        .boxed()
    }

    fn break_lock(&self, oid: &str, name: &str, owner: &LockOwner) -> BoxFuture<'_, Result<()>> {
        let call = self.call(Call::BreakLock {
            oid: oid.to_string(),
            name: name.to_string(),
            owner: owner.clone(),
        });
        unit(call, "break_lock")
    }

    fn watch(&self, oid: &str) -> BoxFuture<'_, Result<Watch>> {
        let call = self.call(Call::Watch {
            oid: oid.to_string(),
        });
        async move {
            match call.await? {
                Answer::Watch(w) => Ok(w),
                a => Err(unexpected("watch", a)),
            }
        }
        .boxed()
    }

    fn unwatch(&self, watch_id: u64) -> BoxFuture<'_, Result<()>> {
        unit(self.call(Call::Unwatch { id: watch_id }), "unwatch")
    }

    fn fence(&self, owner: &LockOwner) -> BoxFuture<'_, Result<()>> {
        let call = self.call(Call::Fence {
            owner: owner.clone(),
        });
        unit(call, "fence")
    }

    fn notify(
        &self,
        oid: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        let call = self.call(Call::Notify {
            oid: oid.to_string(),
            payload,
            timeout,
        });
        async move {
            match call.await? {
                Answer::Replies(r) => Ok(r),
                a => Err(unexpected("notify", a)),
            }
        }
        .boxed()
    }
}

fn unit<'a>(call: BoxFuture<'a, Result<Answer>>, what: &'static str) -> BoxFuture<'a, Result<()>> {
    async move {
        match call.await? {
            Answer::Unit => Ok(()),
            a => Err(unexpected(what, a)),
        }
    }
    .boxed()
}

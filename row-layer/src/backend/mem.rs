//! In-memory backend with a crash model, for tests and the simulation.
//!
//! It keeps two states: `live` (what reads see) and `durable` (what survives a
//! crash), plus the mutations completed since the last flush. [`MemBackend::crash`]
//! rebuilds `live` from `durable` and an arbitrary subset of those unflushed
//! mutations, chosen by a seed: exactly the durability model of the backend
//! contract, and a harsher one than RADOS (where nothing completed is lost).

use super::sparse::SparseData;
use super::{Action, Backend, LockOwner, Notification, ObjectStat, Watch, WriteOp};
use crate::error::{Error, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// One object as the in-memory backend holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MemObject {
    pub(crate) data: SparseData,
    pub(crate) omap: BTreeMap<String, Bytes>,
    pub(crate) xattrs: BTreeMap<String, Bytes>,
    pub(crate) version: u64,
}

type Objects = BTreeMap<String, MemObject>;

#[derive(Default)]
struct State {
    live: Objects,
    durable: Objects,
    unflushed: Vec<(String, WriteOp)>,
    locks: HashMap<(String, String), LockOwner>,
    watchers: HashMap<u64, (String, tokio::sync::mpsc::UnboundedSender<Notification>)>,
    next_watch: u64,
}

/// How a simulated crash treats mutations completed since the last flush.
#[derive(Debug, Clone, Copy)]
pub enum CrashMode {
    /// Every unflushed mutation is lost.
    DropAll,
    /// Every unflushed mutation survives (RADOS-like).
    KeepAll,
    /// Each unflushed mutation independently survives or not, by this seed.
    Random(u64),
}

/// The in-memory backend. Cheap to clone through `Arc`.
#[derive(Default)]
pub struct MemBackend {
    state: Mutex<State>,
}

impl MemBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Simulates a power loss: see [`CrashMode`]. Locks and watches are lost.
    pub fn crash(&self, mode: CrashMode) {
        self.with(|s| {
            let mut rebuilt = s.durable.clone();
            let mut rng = match mode {
                CrashMode::Random(seed) => Some(SmallRng::seed_from_u64(seed)),
                _ => None,
            };
            for (oid, op) in s.unflushed.drain(..) {
                let keep = match mode {
                    CrashMode::DropAll => false,
                    CrashMode::KeepAll => true,
                    CrashMode::Random(_) => rng.as_mut().is_some_and(|r| r.gen_bool(0.5)),
                };
                if keep {
                    // A mutation whose guard no longer holds on the rebuilt
                    // state is one that did not survive.
                    let _ = apply(&mut rebuilt, &oid, &op);
                }
            }
            s.durable = rebuilt.clone();
            s.live = rebuilt;
            s.locks.clear();
            s.watchers.clear();
        });
    }

    /// Number of objects currently visible (for tests).
    pub fn object_count(&self) -> usize {
        self.with(|s| s.live.len())
    }

    /// Total payload bytes currently stored (for space tests).
    pub fn stored_bytes(&self) -> u64 {
        self.with(|s| s.live.values().map(|o| o.data.len() as u64).sum())
    }
}

/// Applies `op` to `objects` with the contract's semantics.
pub(crate) fn apply(objects: &mut Objects, oid: &str, op: &WriteOp) -> Result<()> {
    let existing = objects.get(oid);
    super::guards::check(
        oid,
        &op.guards,
        super::guards::GuardView {
            exists: existing.is_some(),
            version: existing.map_or(0, |o| o.version),
            xattr: |name: &str| Ok(existing.and_then(|o| o.xattrs.get(name)).cloned()),
        },
    )?;
    if op.actions.is_empty() {
        return Ok(());
    }
    let version = existing.map_or(0, |o| o.version) + 1;
    if existing.is_none() && !op.guards.is_empty() && matches!(op.actions[..], [Action::Remove]) {
        return Err(Error::not_found(format!("object {oid} does not exist")));
    }
    validate(op)?;
    // In place: every check is done, so nothing below can fail half way,
    // and an op costs its own size rather than the object's.
    let mut obj = objects.remove(oid);
    for a in &op.actions {
        apply_action(&mut obj, a);
    }
    if let Some(mut o) = obj {
        o.version = version;
        objects.insert(oid.to_string(), o);
    }
    Ok(())
}

/// Rejects offsets and lengths the object could not hold.
fn validate(op: &WriteOp) -> Result<()> {
    let span = |offset: u64, len: u64| {
        offset
            .checked_add(len)
            .and_then(|end| usize::try_from(end).ok())
            .map(|_| ())
            .ok_or_else(|| Error::invalid("offset too large"))
    };
    for a in &op.actions {
        match a {
            Action::Write { offset, data } => span(*offset, data.len() as u64)?,
            Action::Zero { offset, len } => span(*offset, *len)?,
            Action::Truncate(size) => span(*size, 0)?,
            _ => {}
        }
    }
    Ok(())
}

/// Applies one validated action.
fn apply_action(obj: &mut Option<MemObject>, a: &Action) {
    if let Action::Remove = a {
        *obj = None;
        return;
    }
    let o = obj.get_or_insert_with(MemObject::default);
    match a {
        Action::Create | Action::Remove => {}
        Action::Write { offset, data } => o.data.write(*offset as usize, data),
        Action::WriteFull(data) => o.data = SparseData::from_slice(data),
        Action::Zero { offset, len } => {
            let (off, len) = (*offset as usize, *len as usize);
            if off >= o.data.len() {
            } else if off + len >= o.data.len() {
                o.data.resize(off);
            } else {
                o.data.zero(off, off + len);
            }
        }
        Action::Truncate(size) => o.data.resize(*size as usize),
        Action::OmapSet(kvs) => {
            for (k, v) in kvs {
                o.omap.insert(k.clone(), v.clone());
            }
        }
        Action::OmapRemove(keys) => {
            for k in keys {
                o.omap.remove(k);
            }
        }
        Action::OmapClear => o.omap.clear(),
        Action::SetXattr(k, v) => {
            o.xattrs.insert(k.clone(), v.clone());
        }
        Action::RemoveXattr(k) => {
            o.xattrs.remove(k);
        }
    }
}

fn missing(oid: &str) -> Error {
    Error::not_found(format!("object {oid} does not exist"))
}

impl Backend for MemBackend {
    fn kind(&self) -> &'static str {
        "mem"
    }

    fn read(&self, oid: &str, offset: u64, len: u64) -> BoxFuture<'_, Result<Bytes>> {
        let r = self.with(|s| {
            let o = s.live.get(oid).ok_or_else(|| missing(oid))?;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(o.data.len());
            let end = start
                .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
                .min(o.data.len());
            Ok(Bytes::from(o.data.read(start, end)))
        });
        async move { r }.boxed()
    }

    fn stat(&self, oid: &str) -> BoxFuture<'_, Result<ObjectStat>> {
        let r = self.with(|s| {
            s.live
                .get(oid)
                .map(|o| ObjectStat {
                    size: o.data.len() as u64,
                    version: o.version,
                })
                .ok_or_else(|| missing(oid))
        });
        async move { r }.boxed()
    }

    fn omap_get(
        &self,
        oid: &str,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, Bytes)>>> {
        let r = self.with(|s| {
            let o = s.live.get(oid).ok_or_else(|| missing(oid))?;
            Ok(o.omap
                .range::<str, _>((
                    std::ops::Bound::Excluded(start_after),
                    std::ops::Bound::Unbounded,
                ))
                .filter(|(k, _)| k.starts_with(prefix))
                .take(max)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        });
        async move { r }.boxed()
    }

    fn get_xattr(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Option<Bytes>>> {
        let r = self.with(|s| {
            let o = s.live.get(oid).ok_or_else(|| missing(oid))?;
            Ok(o.xattrs.get(name).cloned())
        });
        async move { r }.boxed()
    }

    fn operate(&self, oid: &str, op: WriteOp) -> BoxFuture<'_, Result<()>> {
        let r = self.with(|s| {
            apply(&mut s.live, oid, &op)?;
            s.unflushed.push((oid.to_string(), op));
            Ok(())
        });
        async move { r }.boxed()
    }

    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<String>>> {
        let r = self.with(|s| {
            Ok(s.live
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        });
        async move { r }.boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        self.with(|s| {
            for (oid, op) in std::mem::take(&mut s.unflushed) {
                let _ = apply(&mut s.durable, &oid, &op);
            }
        });
        async { Ok(()) }.boxed()
    }

    fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        _description: &str,
    ) -> BoxFuture<'_, Result<()>> {
        let r = self.with(|s| {
            let key = (oid.to_string(), name.to_string());
            if let Some(owner) = s.locks.get(&key) {
                if owner.cookie != cookie {
                    return Err(Error::busy(format!(
                        "lock {name} on {oid} is held by {} (cookie {})",
                        owner.client, owner.cookie
                    )));
                }
                return Ok(());
            }
            let _ = apply(&mut s.live, oid, &WriteOp::new().action(Action::Create));
            s.locks.insert(
                key,
                LockOwner {
                    client: format!("client.mem.{}", std::process::id()),
                    cookie: cookie.to_string(),
                    address: "local".to_string(),
                },
            );
            Ok(())
        });
        async move { r }.boxed()
    }

    fn unlock(&self, oid: &str, name: &str, cookie: &str) -> BoxFuture<'_, Result<()>> {
        let r = self.with(|s| {
            let key = (oid.to_string(), name.to_string());
            match s.locks.get(&key) {
                Some(o) if o.cookie == cookie => {
                    s.locks.remove(&key);
                    Ok(())
                }
                _ => Err(Error::not_found(format!(
                    "lock {name} on {oid} not held by {cookie}"
                ))),
            }
        });
        async move { r }.boxed()
    }

    fn lock_owners(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Vec<LockOwner>>> {
        let r = self.with(|s| {
            Ok(s.locks
                .get(&(oid.to_string(), name.to_string()))
                .cloned()
                .into_iter()
                .collect())
        });
        async move { r }.boxed()
    }

    fn break_lock(&self, oid: &str, name: &str, owner: &LockOwner) -> BoxFuture<'_, Result<()>> {
        let r = self.with(|s| {
            let key = (oid.to_string(), name.to_string());
            match s.locks.get(&key) {
                Some(o) if o == owner => {
                    s.locks.remove(&key);
                    Ok(())
                }
                _ => Err(Error::not_found(format!(
                    "lock {name} on {oid} not held by that owner"
                ))),
            }
        });
        async move { r }.boxed()
    }

    fn watch(&self, oid: &str) -> BoxFuture<'_, Result<Watch>> {
        let r = self.with(|s| {
            if !s.live.contains_key(oid) {
                return Err(missing(oid));
            }
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            s.next_watch += 1;
            let id = s.next_watch;
            s.watchers.insert(id, (oid.to_string(), tx));
            Ok(Watch { id, events: rx })
        });
        async move { r }.boxed()
    }

    fn unwatch(&self, watch_id: u64) -> BoxFuture<'_, Result<()>> {
        self.with(|s| s.watchers.remove(&watch_id));
        async { Ok(()) }.boxed()
    }

    fn fence(&self, owner: &LockOwner) -> BoxFuture<'_, Result<()>> {
        let _ = owner;
        async { Ok(()) }.boxed()
    }

    fn notify(
        &self,
        oid: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        let receivers: Vec<_> = self.with(|s| {
            let mut rxs = Vec::new();
            s.watchers.retain(|_, (o, tx)| {
                if o != oid {
                    return true;
                }
                let (rtx, rrx) = tokio::sync::oneshot::channel();
                let delivered = tx
                    .send(Notification {
                        payload: payload.clone(),
                        reply: rtx,
                    })
                    .is_ok();
                if delivered {
                    rxs.push(rrx);
                }
                delivered
            });
            rxs
        });
        async move {
            let mut replies = Vec::new();
            for rx in receivers {
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(reply)) => replies.push(reply),
                    Ok(Err(_dropped)) => replies.push(Bytes::new()),
                    Err(_timed_out) => {}
                }
            }
            Ok(replies)
        }
        .boxed()
    }
}

//! A wrapper that counts backend operations and injects faults.
//!
//! Counting proves the cost claims of the design (one backend op per steady
//! state write, reads independent of snapshot count). Fault injection drives
//! the crash tests: the wrapper can make the N-th mutation fail and every
//! later call fail too ("the process died there"), after which the test
//! crashes the underlying [`super::mem::MemBackend`] and reopens the image.
//! It can also fail individual calls with a chosen error kind, to check that
//! errors surface cleanly and poison the image handle where they must.

use super::{Backend, LockOwner, ObjectStat, Watch, WriteOp};
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counts of backend calls, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// `read` calls.
    pub reads: u64,
    /// `stat`, `get_xattr`, `omap_get` and `list` calls.
    pub metadata_reads: u64,
    /// `operate` calls.
    pub mutations: u64,
    /// `flush` calls.
    pub flushes: u64,
}

impl OpCounts {
    /// Every call that reaches the store.
    pub fn total(&self) -> u64 {
        self.reads + self.metadata_reads + self.mutations + self.flushes
    }
}

impl std::ops::Sub for OpCounts {
    type Output = OpCounts;
    fn sub(self, o: OpCounts) -> OpCounts {
        OpCounts {
            reads: self.reads - o.reads,
            metadata_reads: self.metadata_reads - o.metadata_reads,
            mutations: self.mutations - o.mutations,
            flushes: self.flushes - o.flushes,
        }
    }
}

/// Counting, fault-injecting wrapper around any backend.
pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    reads: AtomicU64,
    metadata_reads: AtomicU64,
    mutations: AtomicU64,
    flushes: AtomicU64,
    /// 0 = never; otherwise the mutation with this 1-based number "crashes".
    crash_at_mutation: AtomicU64,
    /// Whether the crashing mutation is applied before the crash.
    crash_applies: AtomicBool,
    crashed: AtomicBool,
    /// Number of upcoming calls that fail with `fail_kind` (not a crash).
    fail_next: AtomicU64,
    fail_transient: AtomicBool,
    rules: Mutex<Vec<FaultRule>>,
}

/// The kind of backend call a [`FaultRule`] matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// `operate`.
    Mutation,
    /// `flush`.
    Flush,
    /// `read`.
    Read,
}

/// What a [`FaultRule`] does to the call it matches.
#[derive(Debug, Clone)]
pub enum FaultEffect {
    /// Fails the call without reaching the inner store.
    Fail(ErrorKind),
    /// Lets the call reach the inner store, then reports this error anyway:
    /// an op that landed but whose reply was lost or timed out.
    FailAfterApply(ErrorKind),
    /// Runs the call after this delay in a task of its own, so it lands even
    /// when the caller drops its future (as a submitted RADOS op does).
    Delay(Duration),
}

/// A named failpoint: the first `skip` matching calls pass, the next `times`
/// get `effect`. Rules are tried in the order they were added.
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// Which calls it matches.
    pub point: FaultPoint,
    /// Only objects whose name contains this (empty: any; flushes ignore it).
    pub oid_contains: String,
    /// Matching calls to let through first.
    pub skip: u64,
    /// Matching calls to affect after that.
    pub times: u64,
    /// What happens to them.
    pub effect: FaultEffect,
}

impl FaultRule {
    /// A rule affecting the next matching call once.
    pub fn once(point: FaultPoint, oid_contains: &str, effect: FaultEffect) -> Self {
        FaultRule {
            point,
            oid_contains: oid_contains.to_string(),
            skip: 0,
            times: 1,
            effect,
        }
    }

    /// Lets `n` matching calls through before the rule acts.
    pub fn after(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }
}

impl FaultBackend {
    /// Wraps `inner` with no faults armed.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        FaultBackend {
            inner,
            reads: AtomicU64::new(0),
            metadata_reads: AtomicU64::new(0),
            mutations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            crash_at_mutation: AtomicU64::new(0),
            crash_applies: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            fail_next: AtomicU64::new(0),
            fail_transient: AtomicBool::new(false),
            rules: Mutex::new(Vec::new()),
        }
    }

    /// Arms a failpoint (see [`FaultRule`]).
    pub fn add_rule(&self, rule: FaultRule) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rule);
    }

    /// Disarms every failpoint.
    pub fn clear_rules(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The effect the armed rules give this call, if any (consuming it).
    fn rule_for(&self, point: FaultPoint, oid: &str) -> Option<FaultEffect> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let rule = rules.iter_mut().find(|r| {
            r.point == point
                && r.times > 0
                && (point == FaultPoint::Flush || oid.contains(r.oid_contains.as_str()))
        })?;
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        rule.times -= 1;
        Some(rule.effect.clone())
    }

    /// Runs `call` (which reaches the inner store) under `effect`.
    fn with_effect<T: Send + 'static>(
        effect: Option<FaultEffect>,
        call: impl FnOnce() -> BoxFuture<'static, Result<T>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T>> {
        match effect {
            None => call(),
            Some(FaultEffect::Fail(kind)) => {
                async move { Err(Error::new(kind, "injected failure (failpoint)")) }.boxed()
            }
            Some(FaultEffect::FailAfterApply(kind)) => {
                let fut = call();
                async move {
                    let _ = fut.await;
                    Err(Error::new(kind, "injected failure after the op applied"))
                }
                .boxed()
            }
            Some(FaultEffect::Delay(d)) => {
                let task = tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    call().await
                });
                async move {
                    task.await
                        .map_err(|e| Error::io(format!("delayed op task failed: {e}")))?
                }
                .boxed()
            }
        }
    }

    /// Current counts.
    pub fn counts(&self) -> OpCounts {
        OpCounts {
            reads: self.reads.load(Ordering::SeqCst),
            metadata_reads: self.metadata_reads.load(Ordering::SeqCst),
            mutations: self.mutations.load(Ordering::SeqCst),
            flushes: self.flushes.load(Ordering::SeqCst),
        }
    }

    /// Arms a crash at the `n`-th mutation from now (1-based). If `applied`,
    /// that mutation reaches the store before the process "dies".
    pub fn crash_after_mutations(&self, n: u64, applied: bool) {
        let base = self.mutations.load(Ordering::SeqCst);
        self.crash_applies.store(applied, Ordering::SeqCst);
        self.crash_at_mutation.store(base + n, Ordering::SeqCst);
    }

    /// Makes the next `n` calls fail; transient (retryable) or I/O errors.
    pub fn fail_next_calls(&self, n: u64, transient: bool) {
        self.fail_transient.store(transient, Ordering::SeqCst);
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Whether the armed crash has happened.
    pub fn has_crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn gate(&self) -> Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Io, "injected crash: backend is gone"));
        }
        let armed = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if armed.is_ok() {
            let kind = if self.fail_transient.load(Ordering::SeqCst) {
                ErrorKind::Transient
            } else {
                ErrorKind::Io
            };
            return Err(Error::new(kind, "injected failure"));
        }
        Ok(())
    }
}

impl Backend for FaultBackend {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn read(&self, oid: &str, offset: u64, len: u64) -> BoxFuture<'_, Result<Bytes>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.gate() {
            return async move { Err(e) }.boxed();
        }
        let effect = self.rule_for(FaultPoint::Read, oid);
        let inner = self.inner.clone();
        let oid = oid.to_string();
        Self::with_effect(effect, move || {
            async move { inner.read(&oid, offset, len).await }.boxed()
        })
    }

    fn stat(&self, oid: &str) -> BoxFuture<'_, Result<ObjectStat>> {
        self.metadata_reads.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.gate() {
            return async move { Err(e) }.boxed();
        }
        self.inner.stat(oid)
    }

    fn omap_get(
        &self,
        oid: &str,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, Bytes)>>> {
        self.metadata_reads.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.gate() {
            return async move { Err(e) }.boxed();
        }
        self.inner.omap_get(oid, start_after, prefix, max)
    }

    fn get_xattr(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Option<Bytes>>> {
        self.metadata_reads.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.gate() {
            return async move { Err(e) }.boxed();
        }
        self.inner.get_xattr(oid, name)
    }

    fn operate(&self, oid: &str, op: WriteOp) -> BoxFuture<'_, Result<()>> {
        let n = self.mutations.fetch_add(1, Ordering::SeqCst) + 1;
        if let Err(e) = self.gate() {
            return async move { Err(e) }.boxed();
        }
        let crash_at = self.crash_at_mutation.load(Ordering::SeqCst);
        if crash_at != 0 && n >= crash_at {
            self.crashed.store(true, Ordering::SeqCst);
            if self.crash_applies.load(Ordering::SeqCst) && n == crash_at {
                let fut = self.inner.operate(oid, op);
                return async move {
                    let _ = fut.await;
                    Err(Error::new(ErrorKind::Io, "injected crash after mutation"))
                }
                .boxed();
            }
            return async { Err(Error::new(ErrorKind::Io, "injected crash before mutation")) }
                .boxed();
        }
        let effect = self.rule_for(FaultPoint::Mutation, oid);
        if effect.is_none() {
            return self.inner.operate(oid, op);
        }
        let inner = self.inner.clone();
        let oid = oid.to_string();
        Self::with_effect(effect, move || {
            async move { inner.operate(&oid, op).await }.boxed()
        })
    }

    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<Vec<String>>> {
        self.metadata_reads.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.gate() {
            return async move { Err(e) }.boxed();
        }
        self.inner.list(prefix)
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.gate() {
            return async move { Err(e) }.boxed();
        }
        let effect = self.rule_for(FaultPoint::Flush, "");
        if effect.is_none() {
            return self.inner.flush();
        }
        let inner = self.inner.clone();
        Self::with_effect(effect, move || async move { inner.flush().await }.boxed())
    }

    fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        description: &str,
    ) -> BoxFuture<'_, Result<()>> {
        if let Err(e) = self.gate() {
            return async move { Err(e) }.boxed();
        }
        self.inner.lock_exclusive(oid, name, cookie, description)
    }

    fn unlock(&self, oid: &str, name: &str, cookie: &str) -> BoxFuture<'_, Result<()>> {
        if let Err(e) = self.gate() {
            return async move { Err(e) }.boxed();
        }
        self.inner.unlock(oid, name, cookie)
    }

    fn lock_owners(&self, oid: &str, name: &str) -> BoxFuture<'_, Result<Vec<LockOwner>>> {
        self.inner.lock_owners(oid, name)
    }

    fn break_lock(&self, oid: &str, name: &str, owner: &LockOwner) -> BoxFuture<'_, Result<()>> {
        self.inner.break_lock(oid, name, owner)
    }

    fn watch(&self, oid: &str) -> BoxFuture<'_, Result<Watch>> {
        self.inner.watch(oid)
    }

    fn unwatch(&self, watch_id: u64) -> BoxFuture<'_, Result<()>> {
        self.inner.unwatch(watch_id)
    }

    fn fence(&self, owner: &LockOwner) -> BoxFuture<'_, Result<()>> {
        self.inner.fence(owner)
    }

    fn notify(
        &self,
        oid: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        self.inner.notify(oid, payload, timeout)
    }
}

//! Image ownership across clients, like librbd's exclusive lock.
//!
//! The writer of an image holds the exclusive lock on its header and watches
//! the header. Other clients talk to it with notifications on the header:
//! - liveness: a `Ping` answered with the owner's lock cookie proves the
//!   owner alive; no answer within the timeout means it is dead or stalled,
//!   and the opener then **fences** it (RADOS: blocklists its address) before
//!   breaking the lock, so a stalled owner that resumes can never write again;
//! - requests that must run on the owner (snapshot create/remove/rename/
//!   protect/rollback, resize, bookmarks, flush) travel to it and come back
//!   with the result; the owner orders them between acknowledged writes.
//!   Rolling back an image someone else is using needs `force`, as in rbd.
//!
//! [`Store::execute`] is the entry point: it runs a request locally when
//! nobody owns the image (taking ownership for the duration) and forwards it
//! otherwise.
//!
//! A forwarded request carries a random id. The owner remembers the ids of
//! its recent requests with their results, so a request re-sent after a
//! timeout (same id) is never carried out twice: the owner answers the
//! duplicate with the first run's result, waiting for it if it is still
//! running. `execute` re-sends only to the same, still-answering owner; if
//! that owner is gone the outcome is unknown and reported as such.
//!
//! A poisoned handle (see `Image::check_usable`) stops answering: it
//! unwatches the header, waits for its in-flight I/O and releases the lock,
//! so that another client can take the image over.

use crate::backend::LockOwner;
use crate::envelope::{self, RecordType};
use crate::error::{Error, ErrorKind, Result};
use crate::image::Image;
use crate::layout;
use crate::store::Store;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

const REQUEST: RecordType = RecordType {
    magic: *b"RRRQ",
    current_version: 1,
    oldest_readable: 1,
};
/// A request with the id that makes re-sending it safe.
const REQUEST_WITH_ID: RecordType = RecordType {
    magic: *b"RRRI",
    current_version: 1,
    oldest_readable: 1,
};
const REPLY: RecordType = RecordType {
    magic: *b"RRRP",
    current_version: 1,
    oldest_readable: 1,
};

/// A request that only the owner of an image may carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerRequest {
    /// Liveness probe; the owner answers with its lock cookie.
    Ping,
    /// `snap create`.
    SnapCreate(String),
    /// `snap rm`.
    SnapRemove(String),
    /// `snap rename`.
    SnapRename(String, String),
    /// `snap protect` (true) / `unprotect` (false).
    SnapProtect(String, bool),
    /// `snap rollback`; refused on an image in use unless `force`.
    SnapRollback {
        /// Target snapshot.
        name: String,
        /// Roll back even though another client has the image open.
        force: bool,
    },
    /// `resize`.
    Resize(u64),
    /// `bookmark create SNAP NAME`.
    BookmarkCreate(String, String),
    /// `bookmark rm`.
    BookmarkRemove(String),
    /// Make the owner's acknowledged writes durable.
    Flush,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IdentifiedRequest {
    id: u64,
    request: OwnerRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum OwnerReply {
    Pong { cookie: String },
    Done,
    Failed { errno: i32, message: String },
}

/// How often an owner checks whether its handle was poisoned.
const POISON_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How many request ids an owner remembers.
const RECENT_REQUESTS: usize = 1024;

/// Results of the owner's recent identified requests, oldest first.
#[derive(Default)]
struct RecentRequests {
    cells: HashMap<u64, Arc<tokio::sync::OnceCell<OwnerReply>>>,
    order: VecDeque<u64>,
}

impl RecentRequests {
    fn cell(&mut self, id: u64) -> Arc<tokio::sync::OnceCell<OwnerReply>> {
        if let Some(c) = self.cells.get(&id) {
            return c.clone();
        }
        while self.order.len() >= RECENT_REQUESTS {
            if let Some(old) = self.order.pop_front() {
                self.cells.remove(&old);
            }
        }
        let c = Arc::new(tokio::sync::OnceCell::new());
        self.cells.insert(id, c.clone());
        self.order.push_back(id);
        c
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request and its id (`None` for requests of clients that send none).
fn decode_request(payload: &[u8]) -> Result<(Option<u64>, OwnerRequest)> {
    match envelope::decode::<IdentifiedRequest>(REQUEST_WITH_ID, payload) {
        Ok(r) => Ok((Some(r.id), r.request)),
        Err(_) => envelope::decode::<OwnerRequest>(REQUEST, payload).map(|r| (None, r)),
    }
}

impl Image {
    /// Carries out `req` on this (owned) handle. `remote` marks requests
    /// coming from another client.
    pub async fn handle_request(&self, req: &OwnerRequest, remote: bool) -> Result<()> {
        match req {
            OwnerRequest::Ping => Ok(()),
            OwnerRequest::SnapCreate(n) => self.snap_create(n).await.map(|_| ()),
            OwnerRequest::SnapRemove(n) => self.snap_remove(n).await,
            OwnerRequest::SnapRename(a, b) => self.snap_rename(a, b).await,
            OwnerRequest::SnapProtect(n, p) => self.snap_set_protected(n, *p).await,
            OwnerRequest::SnapRollback { name, force } => {
                if remote && !force {
                    return Err(Error::busy(format!(
                        "image is in use by its owner; rolling it back to {name} \
                         would change data under it (use --force)"
                    )));
                }
                self.snap_rollback(name).await
            }
            OwnerRequest::Resize(size) => self.resize(*size).await,
            OwnerRequest::BookmarkCreate(s, b) => self.bookmark_create(s, b).await,
            OwnerRequest::BookmarkRemove(b) => self.bookmark_remove(b).await,
            OwnerRequest::Flush => self.flush().await,
        }
    }

    /// Starts answering notifications on the header (called by `open`).
    pub(crate) async fn serve_ownership(&self) -> Result<()> {
        let backend = self.inner.backend.clone();
        let hdr = layout::header_object(&self.inner.id);
        let mut watch = backend.watch(&hdr).await?;
        *self
            .inner
            .watch_id
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(watch.id);
        let weak: Weak<crate::image::Inner> = std::sync::Arc::downgrade(&self.inner);
        let cookie = self.inner.cookie.clone().unwrap_or_default();
        let recent = Arc::new(Mutex::new(RecentRequests::default()));
        tokio::spawn(async move {
            let mut check = tokio::time::interval(POISON_CHECK_INTERVAL);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let n = tokio::select! {
                    n = watch.events.recv() => match n {
                        Some(n) => Some(n),
                        None => break,
                    },
                    _ = check.tick() => None,
                };
                // A dropped handle is a dead owner: stop answering, so the
                // next opener fences it and takes over.
                let Some(inner) = weak.upgrade() else { break };
                let image = Image { inner };
                // A poisoned handle gives the image up (its watch goes, so
                // this loop ends) instead of answering for an owner that
                // can no longer do anything.
                if image.check_usable().is_err() {
                    drop(n); // no answer
                    image.release_poisoned().await;
                    break;
                }
                let Some(n) = n else { continue };
                let request = decode_request(&n.payload);
                let cookie = cookie.clone();
                let recent = recent.clone();
                // Requests run concurrently so that a long one never makes
                // the owner miss a liveness probe.
                tokio::spawn(async move {
                    let reply = match request {
                        Err(e) => OwnerReply::Failed {
                            errno: e.kind().errno(),
                            message: e.message().to_string(),
                        },
                        Ok((_, OwnerRequest::Ping)) => OwnerReply::Pong { cookie },
                        Ok((None, req)) => image.run_remote(&req).await,
                        Ok((Some(id), req)) => {
                            // The first copy of a request runs it; copies
                            // re-sent after a timeout wait for its result.
                            let cell = lock(&recent).cell(id);
                            cell.get_or_init(|| image.run_remote(&req)).await.clone()
                        }
                    };
                    let bytes = envelope::encode(REPLY, &reply).unwrap_or_default();
                    let _ = n.reply.send(Bytes::from(bytes));
                });
            }
        });
        Ok(())
    }

    async fn run_remote(&self, req: &OwnerRequest) -> OwnerReply {
        match self.handle_request(req, true).await {
            Ok(()) => OwnerReply::Done,
            Err(e) => OwnerReply::Failed {
                errno: e.kind().errno(),
                message: e.message().to_string(),
            },
        }
    }

    /// Gives up ownership of a poisoned handle: stops answering, waits for
    /// the I/O in flight (the exclusive gate), then releases the lock.
    async fn release_poisoned(&self) {
        let why = self.check_usable().err().map(|e| e.to_string());
        tracing::warn!(
            image = %self.inner.id,
            reason = why.as_deref().unwrap_or(""),
            "handle is poisoned: giving up ownership of the image"
        );
        self.stop_serving_ownership().await;
        let _gate = self.inner.gate.write().await;
        if let Some(cookie) = &self.inner.cookie {
            let hdr = layout::header_object(&self.inner.id);
            if let Err(e) = self
                .inner
                .backend
                .unlock(&hdr, layout::OWNER_LOCK, cookie)
                .await
            {
                tracing::warn!(image = %self.inner.id, "releasing the lock of a poisoned handle: {e}");
            }
        }
    }

    /// Stops answering notifications (called by `close`).
    pub(crate) async fn stop_serving_ownership(&self) {
        let id = self
            .inner
            .watch_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(id) = id {
            let _ = self.inner.backend.unwatch(id).await;
        }
    }
}

impl Store {
    /// Notifies the owner of image `id` and decodes the replies. Pings go
    /// without an id (every owner version answers them), other requests
    /// with `request_id`.
    async fn notify_owner(
        &self,
        id: &crate::ids::ImageId,
        req: &OwnerRequest,
        request_id: Option<u64>,
        timeout: Duration,
    ) -> Result<Vec<OwnerReply>> {
        Ok(self
            .notify_owner_counting(id, req, request_id, timeout)
            .await?
            .0)
    }

    /// [`Store::notify_owner`], also returning how many watchers the
    /// request reached, whether they answered or not (`None`: unknown).
    async fn notify_owner_counting(
        &self,
        id: &crate::ids::ImageId,
        req: &OwnerRequest,
        request_id: Option<u64>,
        timeout: Duration,
    ) -> Result<(Vec<OwnerReply>, Option<usize>)> {
        let payload = match request_id {
            Some(rid) => envelope::encode(
                REQUEST_WITH_ID,
                &IdentifiedRequest {
                    id: rid,
                    request: req.clone(),
                },
            )?,
            None => envelope::encode(REQUEST, req)?,
        };
        let (replies, missed) = self
            .backend()
            .notify_counting_timeouts(&layout::header_object(id), Bytes::from(payload), timeout)
            .await?;
        // An empty or undecodable reply is left out: it is not an answer.
        let answers = replies
            .iter()
            .filter_map(|r| envelope::decode::<OwnerReply>(REPLY, r).ok())
            .collect();
        Ok((answers, missed.map(|m| m + replies.len())))
    }

    /// Whether `owner` (the current lock holder of image `name`) answers.
    pub(crate) async fn owner_alive(&self, name: &str, owner: &LockOwner) -> Result<bool> {
        let id = self.image_id(name).await?;
        let replies = self
            .notify_owner(&id, &OwnerRequest::Ping, None, self.options().owner_timeout)
            .await?;
        Ok(replies
            .iter()
            .any(|r| matches!(r, OwnerReply::Pong { cookie } if *cookie == owner.cookie)))
    }

    /// Runs `req` on image `name`: locally when nobody owns it, otherwise on
    /// its owner through a notification.
    ///
    /// A request is carried out at most once. If the owner does not answer
    /// within `request_timeout`, it is re-sent (same id, which the owner
    /// deduplicates) only while the same owner still holds the image and
    /// answers pings; if that owner is gone, the request fails with
    /// `Transient` and a message saying its outcome is unknown.
    pub async fn execute(&self, name: &str, req: OwnerRequest) -> Result<()> {
        let request_id: u64 = rand::random::<u64>() | 1;
        // The owner (lock cookie) that may have received the request
        // without answering.
        let mut sent_to: Option<LockOwner> = None;
        for _attempt in 0..4 {
            if sent_to.is_none() {
                match self.open(name).await {
                    Ok(img) => {
                        // Done here for lack of an owner: the garbage it
                        // makes is left to the next owner's reclaimer.
                        let r = img.handle_request(&req, false).await;
                        let closed = img.close_leaving_garbage().await;
                        return r.and(closed);
                    }
                    Err(e) if e.kind() == ErrorKind::Busy => {}
                    Err(e) => return Err(e),
                }
            }
            let id = self.image_id(name).await?;
            let hdr = layout::header_object(&id);
            let owner = self
                .backend()
                .lock_owners(&hdr, layout::OWNER_LOCK)
                .await?
                .into_iter()
                .next();
            match (&sent_to, owner) {
                (None, None) => continue, // released meanwhile: open it
                (None, Some(o)) => sent_to = Some(o),
                (Some(prev), now) => {
                    let same = now.as_ref().is_some_and(|o| o.cookie == prev.cookie);
                    if !same || !self.owner_alive(name, prev).await? {
                        return Err(Error::new(
                            ErrorKind::Transient,
                            format!(
                                "the owner of image {name} ({} at {}) did not answer {req:?} \
                                 within {:?} and is gone now; the request may or may not \
                                 have been carried out",
                                prev.client,
                                prev.address,
                                self.options().request_timeout
                            ),
                        ));
                    }
                    // Same owner, alive: re-send; it answers the duplicate
                    // with the first run's result.
                }
            }
            let (replies, reached) = self
                .notify_owner_counting(&id, &req, Some(request_id), self.options().request_timeout)
                .await?;
            if reached == Some(0) {
                // Nobody was watching: the request reached no owner, so it
                // may still run anywhere (the owner went away meanwhile).
                sent_to = None;
                continue;
            }
            for r in replies {
                match r {
                    OwnerReply::Done => return Ok(()),
                    OwnerReply::Failed { errno, message } => {
                        return Err(Error::new(ErrorKind::from_errno(errno), message))
                    }
                    OwnerReply::Pong { .. } => {}
                }
            }
        }
        Err(Error::new(
            ErrorKind::Transient,
            format!(
                "the owner of image {name} has not finished {req:?} after several waits \
                 of {:?}; it is still running it",
                self.options().request_timeout
            ),
        ))
    }
}

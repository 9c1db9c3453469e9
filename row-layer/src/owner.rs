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

use crate::backend::LockOwner;
use crate::envelope::{self, RecordType};
use crate::error::{Error, ErrorKind, Result};
use crate::image::Image;
use crate::layout;
use crate::store::Store;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Weak;
use std::time::Duration;

const REQUEST: RecordType = RecordType {
    magic: *b"RRRQ",
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
enum OwnerReply {
    Pong { cookie: String },
    Done,
    Failed { errno: i32, message: String },
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
        tokio::spawn(async move {
            while let Some(n) = watch.events.recv().await {
                // A dropped handle is a dead owner: stop answering, so the
                // next opener fences it and takes over.
                let Some(inner) = weak.upgrade() else { break };
                let request = envelope::decode::<OwnerRequest>(REQUEST, &n.payload);
                let cookie = cookie.clone();
                // Requests run concurrently so that a long one never makes
                // the owner miss a liveness probe.
                tokio::spawn(async move {
                    let reply = match request {
                        Err(e) => OwnerReply::Failed {
                            errno: e.kind().errno(),
                            message: e.message().to_string(),
                        },
                        Ok(OwnerRequest::Ping) => OwnerReply::Pong { cookie },
                        Ok(req) => match (Image { inner }).handle_request(&req, true).await {
                            Ok(()) => OwnerReply::Done,
                            Err(e) => OwnerReply::Failed {
                                errno: e.kind().errno(),
                                message: e.message().to_string(),
                            },
                        },
                    };
                    let bytes = envelope::encode(REPLY, &reply).unwrap_or_default();
                    let _ = n.reply.send(Bytes::from(bytes));
                });
            }
        });
        Ok(())
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
    async fn notify_owner(
        &self,
        name: &str,
        req: &OwnerRequest,
        timeout: Duration,
    ) -> Result<Vec<OwnerReply>> {
        let id = self.image_id(name).await?;
        let payload = Bytes::from(envelope::encode(REQUEST, req)?);
        let replies = self
            .backend()
            .notify(&layout::header_object(&id), payload, timeout)
            .await?;
        Ok(replies
            .iter()
            .filter_map(|r| envelope::decode::<OwnerReply>(REPLY, r).ok())
            .collect())
    }

    /// Whether `owner` (the current lock holder of image `name`) answers.
    pub(crate) async fn owner_alive(&self, name: &str, owner: &LockOwner) -> Result<bool> {
        let replies = self
            .notify_owner(name, &OwnerRequest::Ping, self.options().owner_timeout)
            .await?;
        Ok(replies
            .iter()
            .any(|r| matches!(r, OwnerReply::Pong { cookie } if *cookie == owner.cookie)))
    }

    /// Runs `req` on image `name`: locally when nobody owns it, otherwise on
    /// its owner through a notification.
    pub async fn execute(&self, name: &str, req: OwnerRequest) -> Result<()> {
        for _attempt in 0..3 {
            match self.open(name).await {
                Ok(img) => {
                    let r = img.handle_request(&req, false).await;
                    let closed = img.close().await;
                    return r.and(closed);
                }
                Err(e) if e.kind() == ErrorKind::Busy => {}
                Err(e) => return Err(e),
            }
            let replies = self
                .notify_owner(name, &req, self.options().request_timeout)
                .await?;
            for r in replies {
                match r {
                    OwnerReply::Done => return Ok(()),
                    OwnerReply::Failed { errno, message } => {
                        return Err(Error::new(ErrorKind::from_errno(errno), message))
                    }
                    OwnerReply::Pong { .. } => {}
                }
            }
            // The owner went away between the open and the request: retry.
        }
        Err(Error::new(
            ErrorKind::Transient,
            format!("the owner of image {name} did not answer the request"),
        ))
    }
}

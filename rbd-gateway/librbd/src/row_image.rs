//! An open ROW image: the engine's handles behind one `rbd_image_t`.
//!
//! `head` is the owned, writable head (None for read-only and snapshot
//! opens). `view` is what reads, `rbd_stat` and `rbd_diff_iterate2` see:
//! the head, a read-only head view, or the snapshot chosen at open or with
//! `rbd_snap_set`. Writes go to `head` only, and only while no snapshot is
//! set (else `-EROFS`, as librbd).

use crate::events::Events;
use row_layer::{Image, Store};
use std::sync::{Arc, RwLock};

/// One open ROW image.
pub struct RowImage {
    pub(crate) store: Store,
    pub(crate) name: String,
    pool: String,
    pub(crate) head: Option<Image>,
    view: RwLock<(Image, Option<String>)>,
    pub(crate) events: Events,
    /// Shared by every write, exclusive for a compare-and-write, so that
    /// no write of this handle lands between its compare and its write
    /// (librbd gets that from one RADOS op; the image has one writer).
    pub(crate) cas: tokio::sync::RwLock<()>,
}

impl RowImage {
    /// An image whose reads see `view` (`snap`: its snapshot name).
    pub(crate) fn new(
        store: Store,
        pool: String,
        name: String,
        head: Option<Image>,
        view: Image,
        snap: Option<String>,
    ) -> Arc<RowImage> {
        Arc::new(RowImage {
            store,
            pool,
            name,
            head,
            view: RwLock::new((view, snap)),
            events: Events::default(),
            cas: tokio::sync::RwLock::new(()),
        })
    }

    /// The pool's name.
    pub(crate) fn pool_name(&self) -> String {
        self.pool.clone()
    }

    /// The view reads see.
    pub(crate) fn view(&self) -> Image {
        self.view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The snapshot reads see, if any.
    pub(crate) fn snap(&self) -> Option<String> {
        self.view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Replaces the view (`rbd_snap_set`).
    pub(crate) fn set_view(&self, view: Image, snap: Option<String>) {
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = (view, snap);
    }

    /// The head for a write, or `-EROFS` for read-only opens and while a
    /// snapshot is set.
    pub(crate) fn writable(&self) -> Result<Image, i32> {
        match (&self.head, self.snap()) {
            (Some(h), None) => Ok(h.clone()),
            _ => Err(-libc::EROFS),
        }
    }
}

//! `rbd_image_t` values and what they point at.
//!
//! A native image's `rbd_image_t` is the system librbd's own handle, so a
//! call this library does not implement could be handed to librbd
//! unchanged; a ROW image's is a pointer to its [`RowImage`]. Every handle
//! this library opened is registered here with its state, so each call
//! finds out which kind it has; an unknown handle is `-EINVAL`.

use crate::events::Events;
use crate::row_image::RowImage;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, OnceLock, RwLock};

/// A native image: the system librbd's handle and our notification state.
pub struct NativeImage {
    pub(crate) raw: usize,
    pub(crate) events: Events,
}

/// What a handle refers to.
#[derive(Clone)]
pub enum Handle {
    /// A ROW image, served by the engine.
    Row(Arc<RowImage>),
    /// A native image, forwarded to the system librbd.
    Native(Arc<NativeImage>),
}

fn registry() -> &'static RwLock<HashMap<usize, Handle>> {
    static R: OnceLock<RwLock<HashMap<usize, Handle>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The handle behind `image`.
pub(crate) fn lookup(image: *mut c_void) -> Result<Handle, i32> {
    registry()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(image as usize))
        .cloned()
        .ok_or(-libc::EINVAL)
}

/// Registers a ROW image; its `rbd_image_t`.
pub(crate) fn add_row(img: Arc<RowImage>) -> *mut c_void {
    let key = Arc::as_ptr(&img) as usize;
    registry()
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, Handle::Row(img));
    key as *mut c_void
}

/// Registers a native handle; the same pointer as the `rbd_image_t`.
pub(crate) fn add_native(raw: *mut c_void) -> *mut c_void {
    let n = Arc::new(NativeImage {
        raw: raw as usize,
        events: Events::default(),
    });
    registry()
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(raw as usize, Handle::Native(n));
    raw
}

/// Unregisters `image` (at close).
pub(crate) fn remove(image: *mut c_void) -> Option<Handle> {
    registry()
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(image as usize))
}

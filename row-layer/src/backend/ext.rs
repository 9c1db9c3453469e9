//! Helpers every caller of a [`Backend`] needs, implemented once for every
//! backend (object_store's `ObjectStoreExt` pattern): the core trait stays
//! small, and nobody rewrites paging, whole-object reads or "absent is fine".

use super::Backend;
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use std::future::Future;

/// Entries per `omap_get` request (the OSD returns at most 1024).
pub const OMAP_PAGE: usize = 1024;

/// Derived operations, available on every [`Backend`] (also `dyn Backend`).
pub trait BackendExt: Backend {
    /// The whole payload of `oid`, from one `read` (so from one version of
    /// the object, even while another client rewrites it: a `stat` followed
    /// by a read of that size could see two versions and come back short).
    /// The read asks for more than it expects; a full buffer means the
    /// object may be longer, and it asks again for four times as much.
    fn read_all<'a>(&'a self, oid: &'a str) -> impl Future<Output = Result<Bytes>> + Send + 'a {
        async move {
            let mut len: u64 = 64 * 1024;
            loop {
                let bytes = self.read(oid, 0, len).await?;
                if (bytes.len() as u64) < len {
                    return Ok(bytes);
                }
                len = len.checked_mul(4).ok_or_else(|| {
                    Error::corrupt(format!("{oid}: object too large to read whole"))
                })?;
            }
        }
    }

    /// Every omap entry of `oid` whose key starts with `prefix`, in key
    /// order, fetched in pages of [`OMAP_PAGE`].
    fn omap_all<'a>(
        &'a self,
        oid: &'a str,
        prefix: &'a str,
    ) -> impl Future<Output = Result<Vec<(String, Bytes)>>> + Send + 'a {
        async move {
            let mut out = Vec::new();
            let mut after = String::new();
            loop {
                let page = self.omap_get(oid, &after, prefix, OMAP_PAGE).await?;
                let Some((last, _)) = page.last() else { break };
                after = last.clone();
                let n = page.len();
                out.extend(page);
                if n < OMAP_PAGE {
                    break;
                }
            }
            Ok(out)
        }
    }
}

impl<B: Backend + ?Sized> BackendExt for B {}

/// "Absent is fine": a `NotFound` result becomes `None`.
pub trait NotFoundExt<T> {
    /// `Ok(Some(v))`, `Ok(None)` for `NotFound`, other errors unchanged.
    fn or_absent(self) -> Result<Option<T>>;
}

impl<T> NotFoundExt<T> for Result<T> {
    fn or_absent(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

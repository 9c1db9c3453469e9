//! The state one `rbd-row` invocation shares between its verbs: the stores,
//! the spec flags, and the heads it opened (closed on Ctrl-C). Every verb
//! module depends on this one, never on each other.

use crate::error::{CliError, CliResult};
use crate::spec::{self, ImageSpec, SnapMode, SpecFlags};
use crate::store_select::Stores;
use row_layer::OwnerRequest;
use row_layer::{Image, Store};

/// Shared state of one invocation.
pub(crate) struct Ctx {
    pub(crate) stores: Stores,
    pub(crate) flags: SpecFlags,
    pub(crate) progress: bool,
    /// Heads opened by this invocation, closed on Ctrl-C so that an
    /// interrupted command does not leave the image owned.
    pub(crate) open: std::sync::Mutex<Vec<Image>>,
}

impl Ctx {
    pub(crate) fn spec(&self, s: Option<&str>, mode: SnapMode) -> CliResult<ImageSpec> {
        spec::parse(s, &self.flags, mode)
    }

    /// The store holding `spec`; a missing local pool is "no such image".
    pub(crate) async fn store(&self, spec: &ImageSpec, create: bool) -> CliResult<Store> {
        self.stores
            .get(&spec.pool, &spec.namespace, create)
            .await?
            .ok_or_else(|| {
                CliError::errno(format!("rbd-row: error opening image {}", spec.image), 2)
            })
    }

    /// Opens the head (exclusive owner) of `spec`.
    pub(crate) async fn open_head(&self, spec: &ImageSpec) -> CliResult<(Store, Image)> {
        let store = self.store(spec, false).await?;
        let img = store.open(&spec.image).await.map_err(|e| {
            CliError::row(format!("rbd-row: error opening image {}", spec.image), &e)
        })?;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(img.clone());
        Ok((store, img))
    }

    /// Opens the head read-only without taking ownership (like rbd for
    /// diff/export/du), so it works while another client owns the image.
    pub(crate) async fn open_head_read_only(&self, spec: &ImageSpec) -> CliResult<(Store, Image)> {
        let store = self.store(spec, false).await?;
        let img = store.open_head_read_only(&spec.image).await.map_err(|e| {
            CliError::row(format!("rbd-row: error opening image {}", spec.image), &e)
        })?;
        Ok((store, img))
    }

    /// Opens the view `spec` names, read-only: a snapshot or the head.
    pub(crate) async fn open_view(&self, spec: &ImageSpec) -> CliResult<(Store, Image)> {
        match &spec.snap {
            None => self.open_head_read_only(spec).await,
            Some(s) => {
                let store = self.store(spec, false).await?;
                let img = store.open_snapshot(&spec.image, s).await.map_err(|e| {
                    CliError::row(
                        format!("rbd-row: error opening image {}@{s}", spec.image),
                        &e,
                    )
                })?;
                Ok((store, img))
            }
        }
    }
}

impl Ctx {
    /// Runs an operation only the image's owner may carry out: on the owning
    /// process (e.g. a gateway serving the image) when there is one, through
    /// the engine's request forwarding, else locally.
    pub(crate) async fn owner_request(
        &self,
        spec: &ImageSpec,
        req: OwnerRequest,
        what: &str,
    ) -> CliResult<()> {
        let store = self.store(spec, false).await?;
        store
            .execute(&spec.image, req)
            .await
            .map_err(|e| CliError::row(what.to_string(), &e))
    }
}

/// Closes `img` and returns `r` (the close error if `r` was Ok).
pub(crate) async fn finish<T>(img: Image, r: CliResult<T>) -> CliResult<T> {
    let c = img.close().await;
    let v = r?;
    c.map_err(|e| CliError::row("rbd-row: error closing image", &e))?;
    Ok(v)
}

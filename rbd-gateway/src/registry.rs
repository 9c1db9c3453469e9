//! [`ImageRegistry`]: NBD export names → row-layer images.
//!
//! Export names follow rbd's image spec: `[pool/[namespace/]]image[@snap]`.
//! The local store has one pool and one namespace, so both are accepted and
//! ignored (they become meaningful with a RADOS backend). `image` is the
//! read-write head, opened once (the engine makes its opener the exclusive
//! owner) and shared by every connection, so a flush on one connection covers
//! writes of all of them (`CAN_MULTI_CONN`). `image@snap` is a read-only
//! view, opened per request (snapshot opens take no ownership).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use row_layer::{Image, Store};
use row_nbd::{BoxFuture, ExportBackend, ExportError, ExportRegistry, ExportResult};
use tracing::{info, warn};

use crate::export::{export_error, ImageExport};

/// A parsed export name: `[pool/[namespace/]]image[@snap]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExportSpec {
    /// Pool, if given (ignored by the local store).
    pub pool: Option<String>,
    /// Namespace, if given (ignored by the local store).
    pub namespace: Option<String>,
    /// Image name.
    pub image: String,
    /// Snapshot name for a read-only view.
    pub snap: Option<String>,
}

impl ExportSpec {
    /// Parses `[pool/[namespace/]]image[@snap]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (path, snap) = match spec.split_once('@') {
            Some((p, s)) => {
                if s.is_empty() || s.contains(['@', '/']) {
                    return Err(format!("bad snapshot name in export spec {spec:?}"));
                }
                (p, Some(s.to_owned()))
            }
            None => (spec, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (pool, namespace, image) = match parts.as_slice() {
            [image] => (None, None, *image),
            [pool, image] => (Some(*pool), None, *image),
            [pool, ns, image] => (Some(*pool), Some(*ns), *image),
            _ => return Err(format!("bad export spec {spec:?}: too many '/'")),
        };
        if image.is_empty() || pool.is_some_and(str::is_empty) {
            return Err(format!(
                "bad export spec {spec:?}: expected [pool/[namespace/]]image[@snap]"
            ));
        }
        Ok(ExportSpec {
            pool: pool.map(str::to_owned),
            namespace: namespace.filter(|n| !n.is_empty()).map(str::to_owned),
            image: image.to_owned(),
            snap,
        })
    }

    /// The name in the local store: `image` or `image@snap`.
    pub fn local_name(&self) -> String {
        match &self.snap {
            Some(s) => format!("{}@{s}", self.image),
            None => self.image.clone(),
        }
    }
}

impl fmt::Display for ExportSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.pool {
            write!(f, "{p}/")?;
            if let Some(n) = &self.namespace {
                write!(f, "{n}/")?;
            }
        }
        write!(f, "{}", self.local_name())
    }
}

/// Which exports a gateway serves.
#[derive(Clone, Debug)]
pub enum ExportSelection {
    /// Every image of the store (`--export-all`): `NBD_OPT_LIST` announces
    /// every image head; any `image` or `image@snap` may be opened.
    All,
    /// Only these (`--export SPEC ...`). An `image` entry also permits its
    /// snapshots as read-only `image@snap`; an `image@snap` entry permits
    /// only that view. The entries are announced as given.
    Only(Vec<String>),
}

/// Registry of the exports of one store.
pub struct ImageRegistry {
    store: Store,
    selection: ExportSelection,
    allowed: Vec<ExportSpec>,
    read_only: bool,
    /// Open heads by image name, shared by all connections.
    heads: tokio::sync::Mutex<BTreeMap<String, Image>>,
    /// Image names announced with `--export-all` (refreshed by
    /// [`ImageRegistry::refresh_list`]; `list` must not block).
    listed: Mutex<Vec<String>>,
}

impl ImageRegistry {
    /// The store the exports come from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Registry over `store`. Fails on a malformed `--export` spec.
    pub fn new(store: Store, selection: ExportSelection, read_only: bool) -> Result<Self, String> {
        let allowed = match &selection {
            ExportSelection::All => Vec::new(),
            ExportSelection::Only(specs) => specs
                .iter()
                .map(|s| ExportSpec::parse(s))
                .collect::<Result<_, _>>()?,
        };
        Ok(ImageRegistry {
            store,
            selection,
            allowed,
            read_only,
            heads: tokio::sync::Mutex::new(BTreeMap::new()),
            listed: Mutex::new(Vec::new()),
        })
    }

    /// Whether every export is read-only (`--read-only`).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The specs given with `--export` (empty with `--export-all`).
    pub fn configured(&self) -> &[ExportSpec] {
        &self.allowed
    }

    fn permitted(&self, spec: &ExportSpec) -> bool {
        match self.selection {
            ExportSelection::All => true,
            ExportSelection::Only(_) => self
                .allowed
                .iter()
                .any(|a| a.image == spec.image && (a.snap.is_none() || a.snap == spec.snap)),
        }
    }

    /// Re-reads the image list announced under `--export-all`.
    pub async fn refresh_list(&self) -> row_layer::Result<()> {
        if let ExportSelection::All = self.selection {
            let names: Vec<String> = self
                .store
                .list()
                .await?
                .into_iter()
                .map(|e| e.name)
                .collect();
            *self.listed.lock().unwrap_or_else(|p| p.into_inner()) = names;
        }
        Ok(())
    }

    /// The image behind export `name` (test and admin hook): the shared head
    /// handle for `image` (opened on first use), a fresh read-only handle for
    /// `image@snap`. Writes and snapshots through the returned head handle
    /// are seen by every connection.
    pub async fn image(&self, name: &str) -> ExportResult<Image> {
        let spec = ExportSpec::parse(name).map_err(ExportError::invalid)?;
        if !self.permitted(&spec) {
            return Err(ExportError::invalid(format!("no export named {name:?}")));
        }
        match &spec.snap {
            Some(snap) => self
                .store
                .open_snapshot(&spec.image, snap)
                .await
                .map_err(|e| open_error(name, e)),
            None => {
                let mut heads = self.heads.lock().await;
                if let Some(img) = heads.get(&spec.image) {
                    return Ok(img.clone());
                }
                let img = self
                    .store
                    .open(&spec.image)
                    .await
                    .map_err(|e| open_error(name, e))?;
                info!(image = %spec.image, size = img.size(), "image opened");
                heads.insert(spec.image.clone(), img.clone());
                Ok(img)
            }
        }
    }

    /// Flushes and closes every open head (releasing ownership). Called
    /// after the server drained its connections.
    pub async fn close_all(&self) -> row_layer::Result<()> {
        let heads = std::mem::take(&mut *self.heads.lock().await);
        let mut first_err = None;
        for (name, img) in heads {
            let r = match img.flush().await {
                Ok(()) => img.close().await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => info!(image = %name, "image closed"),
                Err(e) => {
                    warn!(image = %name, error = %e, "closing image failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn open_error(name: &str, e: row_layer::Error) -> ExportError {
    if e.kind() == row_layer::ErrorKind::NotFound {
        ExportError::invalid(format!("no export named {name:?}: {e}"))
    } else {
        export_error(e.context(format!("opening export {name}")))
    }
}

impl ExportRegistry for ImageRegistry {
    fn open(&self, name: &str) -> BoxFuture<'_, ExportResult<Arc<dyn ExportBackend>>> {
        let name = name.to_owned();
        Box::pin(async move {
            let image = self.image(&name).await?;
            Ok(Arc::new(ImageExport::new(image, name, self.read_only)) as Arc<dyn ExportBackend>)
        })
    }

    fn list(&self) -> Vec<String> {
        match &self.selection {
            ExportSelection::All => self
                .listed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ExportSelection::Only(specs) => specs.clone(),
        }
    }

    fn default_export(&self) -> Option<String> {
        match &self.selection {
            ExportSelection::Only(specs) if specs.len() == 1 => specs.first().cloned(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        let s = ExportSpec::parse("img").unwrap();
        assert_eq!((s.pool, s.image.as_str(), s.snap), (None, "img", None));
        let s = ExportSpec::parse("rbd/img@s1").unwrap();
        assert_eq!(s.pool.as_deref(), Some("rbd"));
        assert_eq!(s.local_name(), "img@s1");
        let s = ExportSpec::parse("rbd/ns/img").unwrap();
        assert_eq!(s.namespace.as_deref(), Some("ns"));
        assert_eq!(s.local_name(), "img");
        assert_eq!(s.to_string(), "rbd/ns/img");
        for bad in ["", "a/b/c/d", "/img", "img@", "img@a@b", "rbd/", "a@b/c"] {
            assert!(ExportSpec::parse(bad).is_err(), "{bad:?}");
        }
    }
}

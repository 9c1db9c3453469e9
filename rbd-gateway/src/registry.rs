//! [`ImageRegistry`]: NBD export names → row-layer images.
//!
//! Export names follow rbd's image spec: `[pool/[namespace/]]image[@snap]`,
//! resolved as `rbd-row` resolves them: a missing pool is the gateway's
//! default pool (`rbd` unless `--pool`), a missing namespace its default
//! namespace (`""` unless `--namespace`). Each (pool, namespace) is its own
//! [`Store`], opened through the CLI's [`Stores`] (local store:
//! `DIR/<pool>[/<namespace>]`; Ceph: the RADOS pool and namespace), so the
//! gateway and `rbd-row` agree on where every image lives. `image` is the
//! read-write head, opened once (the engine makes its opener the exclusive
//! owner) and shared by every connection, so a flush on one connection covers
//! writes of all of them (`CAN_MULTI_CONN`). `image@snap` is a read-only
//! view, opened per request (snapshot opens take no ownership).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use rbd_row_cli::spec::DEFAULT_POOL;
use rbd_row_cli::store_select::Stores;
use row_layer::backend::fault::{FaultBackend, OpCounts};
use row_layer::{Image, ImageOptions, Store};
use row_nbd::{BoxFuture, ExportBackend, ExportError, ExportRegistry, ExportResult};
use tracing::{info, warn};

use crate::export::{export_error, ImageExport};

/// A parsed export name: `[pool/[namespace/]]image[@snap]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExportSpec {
    /// Pool, if given (else the gateway's default pool).
    pub pool: Option<String>,
    /// Namespace, if given (else the gateway's default namespace).
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

    /// The name within its pool and namespace: `image` or `image@snap`.
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
    /// Every image of the default pool and namespace (`--export-all`):
    /// `NBD_OPT_LIST` announces every image head there; any `image` or
    /// `image@snap` (of any pool) may be opened.
    All,
    /// Only these (`--export SPEC ...`). An `image` entry also permits its
    /// snapshots as read-only `image@snap`; an `image@snap` entry permits
    /// only that view. The entries are announced as given.
    Only(Vec<String>),
}

/// Where an image lives: (pool, namespace, image).
pub type ImageKey = (String, String, String);

/// One opened (pool, namespace) store, with its backend wrapped in a
/// counting [`FaultBackend`] (no faults armed).
struct PoolStore {
    store: Store,
    counter: Arc<FaultBackend>,
}

/// Registry of the exports of the stores of one target (local directory or
/// Ceph cluster).
pub struct ImageRegistry {
    stores: Arc<Stores>,
    default_pool: String,
    default_namespace: String,
    image_options: ImageOptions,
    selection: ExportSelection,
    allowed: Vec<ExportSpec>,
    /// `allowed`, resolved against the defaults.
    allowed_keys: Vec<(ImageKey, Option<String>)>,
    read_only: bool,
    /// The (pool, namespace) stores opened so far.
    pools: Mutex<BTreeMap<(String, String), Arc<PoolStore>>>,
    /// Open heads by (pool, namespace, image), shared by all connections.
    heads: tokio::sync::Mutex<BTreeMap<ImageKey, Image>>,
    /// Image names announced with `--export-all` (refreshed by
    /// [`ImageRegistry::refresh_list`]; `list` must not block).
    listed: Mutex<Vec<String>>,
}

impl ImageRegistry {
    /// Registry over `stores` with the default pool `rbd` and the default
    /// namespace. Fails on a malformed `--export` spec.
    pub fn new(
        stores: Arc<Stores>,
        selection: ExportSelection,
        read_only: bool,
    ) -> Result<Self, String> {
        Self::with_defaults(stores, DEFAULT_POOL, "", selection, read_only)
    }

    /// Registry over `stores`; specs without a pool (namespace) resolve to
    /// `default_pool` (`default_namespace`). Fails on a malformed `--export`
    /// spec.
    pub fn with_defaults(
        stores: Arc<Stores>,
        default_pool: &str,
        default_namespace: &str,
        selection: ExportSelection,
        read_only: bool,
    ) -> Result<Self, String> {
        if default_pool.is_empty() || default_pool.contains(['/', '@']) {
            return Err(format!("bad default pool {default_pool:?}"));
        }
        if default_namespace.contains(['/', '@']) {
            return Err(format!("bad default namespace {default_namespace:?}"));
        }
        let allowed: Vec<ExportSpec> = match &selection {
            ExportSelection::All => Vec::new(),
            ExportSelection::Only(specs) => specs
                .iter()
                .map(|s| ExportSpec::parse(s))
                .collect::<Result<_, _>>()?,
        };
        let mut reg = ImageRegistry {
            stores,
            default_pool: default_pool.to_owned(),
            default_namespace: default_namespace.to_owned(),
            image_options: ImageOptions::default(),
            selection,
            allowed_keys: Vec::new(),
            allowed,
            read_only,
            pools: Mutex::new(BTreeMap::new()),
            heads: tokio::sync::Mutex::new(BTreeMap::new()),
            listed: Mutex::new(Vec::new()),
        };
        reg.allowed_keys = reg
            .allowed
            .iter()
            .map(|a| (reg.key(a), a.snap.clone()))
            .collect();
        Ok(reg)
    }

    /// Handle options for the images this registry opens.
    pub fn with_image_options(mut self, options: ImageOptions) -> Self {
        self.image_options = options;
        self
    }

    /// The stores the exports come from.
    pub fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }

    /// The pool of specs that name none.
    pub fn default_pool(&self) -> &str {
        &self.default_pool
    }

    /// The namespace of specs that name none (`""`: the default namespace).
    pub fn default_namespace(&self) -> &str {
        &self.default_namespace
    }

    /// Where the image of `spec` lives.
    pub fn key(&self, spec: &ExportSpec) -> ImageKey {
        (
            spec.pool
                .clone()
                .unwrap_or_else(|| self.default_pool.clone()),
            spec.namespace
                .clone()
                .unwrap_or_else(|| self.default_namespace.clone()),
            spec.image.clone(),
        )
    }

    /// The short display name of `key`: the bare image name in the default
    /// pool and namespace, else `pool/[namespace/]image`.
    pub fn display_name(&self, key: &ImageKey) -> String {
        let (pool, ns, image) = key;
        if *pool == self.default_pool && *ns == self.default_namespace {
            image.clone()
        } else if ns.is_empty() {
            format!("{pool}/{image}")
        } else {
            format!("{pool}/{ns}/{image}")
        }
    }

    /// The store of `pool`/`namespace`, as the gateway uses it (backend
    /// calls counted). `Ok(None)`: a local pool directory that does not
    /// exist (so nothing is in it); it is never created here.
    pub async fn store(&self, pool: &str, namespace: &str) -> row_layer::Result<Option<Store>> {
        Ok(self
            .pool_store(pool, namespace)
            .await?
            .map(|p| p.store.clone()))
    }

    async fn pool_store(
        &self,
        pool: &str,
        namespace: &str,
    ) -> row_layer::Result<Option<Arc<PoolStore>>> {
        let k = (pool.to_owned(), namespace.to_owned());
        if let Some(p) = self.lock_pools().get(&k) {
            return Ok(Some(p.clone()));
        }
        let Some(inner) = self
            .stores
            .get(pool, namespace, false)
            .await
            .map_err(cli_error)?
        else {
            return Ok(None);
        };
        let mut pools = self.lock_pools();
        let p = pools.entry(k).or_insert_with(|| {
            let counter = Arc::new(FaultBackend::new(inner.backend().clone()));
            let store = Store::new(counter.clone()).with_image_options(self.image_options.clone());
            Arc::new(PoolStore { store, counter })
        });
        Ok(Some(p.clone()))
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Arc<PoolStore>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls that reached the backends of every store opened so far.
    pub fn backend_ops(&self) -> OpCounts {
        let pools: Vec<Arc<PoolStore>> = self.lock_pools().values().cloned().collect();
        pools.iter().fold(OpCounts::default(), |a, p| {
            let c = p.counter.counts();
            OpCounts {
                reads: a.reads + c.reads,
                metadata_reads: a.metadata_reads + c.metadata_reads,
                mutations: a.mutations + c.mutations,
                flushes: a.flushes + c.flushes,
            }
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

    fn permitted(&self, key: &ImageKey, snap: &Option<String>) -> bool {
        match self.selection {
            ExportSelection::All => true,
            ExportSelection::Only(_) => self
                .allowed_keys
                .iter()
                .any(|(k, s)| k == key && (s.is_none() || s == snap)),
        }
    }

    /// Re-reads the image list announced under `--export-all` (the images
    /// of the default pool and namespace).
    pub async fn refresh_list(&self) -> row_layer::Result<()> {
        if let ExportSelection::All = self.selection {
            let names: Vec<String> = match self
                .store(&self.default_pool, &self.default_namespace)
                .await?
            {
                Some(store) => store.list().await?.into_iter().map(|e| e.name).collect(),
                None => Vec::new(),
            };
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
        let key = self.key(&spec);
        if !self.permitted(&key, &spec.snap) {
            return Err(ExportError::invalid(format!("no export named {name:?}")));
        }
        let (pool, ns, image) = &key;
        let store = || async {
            match self.store(pool, ns).await {
                Ok(Some(s)) => Ok(s),
                Ok(None) => Err(ExportError::invalid(format!(
                    "no export named {name:?}: pool {pool} does not exist"
                ))),
                Err(e) => Err(open_error(name, e)),
            }
        };
        match &spec.snap {
            Some(snap) => store()
                .await?
                .open_snapshot(image, snap)
                .await
                .map_err(|e| open_error(name, e)),
            None => {
                let mut heads = self.heads.lock().await;
                if let Some(img) = heads.get(&key) {
                    return Ok(img.clone());
                }
                let img = store()
                    .await?
                    .open(image)
                    .await
                    .map_err(|e| open_error(name, e))?;
                info!(
                    pool = %pool,
                    namespace = %ns,
                    image = %image,
                    size = img.size(),
                    "image opened"
                );
                heads.insert(key.clone(), img.clone());
                Ok(img)
            }
        }
    }

    /// The heads opened so far, by display name ([`Self::display_name`]:
    /// what `/metrics` reports on).
    pub async fn open_heads(&self) -> Vec<(String, Image)> {
        self.heads
            .lock()
            .await
            .iter()
            .map(|(k, i)| (self.display_name(k), i.clone()))
            .collect()
    }

    /// Flushes and closes every open head (releasing ownership). Called
    /// after the server drained its connections.
    pub async fn close_all(&self) -> row_layer::Result<()> {
        let heads = std::mem::take(&mut *self.heads.lock().await);
        let mut first_err = None;
        for (key, img) in heads {
            let name = self.display_name(&key);
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

/// A store-selection error of the CLI library as an engine error.
fn cli_error(e: rbd_row_cli::CliError) -> row_layer::Error {
    let kind = row_layer::ErrorKind::from_errno(e.errno);
    let msg = match &e.detail {
        Some(d) => format!("{}: {d}", e.message),
        None => e.message.clone(),
    };
    row_layer::Error::new(kind, msg)
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

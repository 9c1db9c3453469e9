//! An `rbd-gateway` served from inside the benchmark process, on a free
//! port, over the same [`Stores`] the benchmark creates its images in, so a
//! step can take snapshots and write churn through the gateway's own image
//! handles (as the gateway's admin would) while fio reads and writes over
//! NBD from another process.

use anyhow::anyhow;
use rbd_gateway::{ExportSelection, Gateway, GatewayConfig};
use rbd_row_cli::store_select::{self, StoreArgs, Stores};
use row_layer::{Image, Store};
use std::net::SocketAddr;
use std::sync::Arc;

/// The Ceph stores selected as `rbd-row` would select them (`CEPH_CONF`).
pub fn ceph_stores() -> anyhow::Result<Arc<Stores>> {
    let target = store_select::select(&StoreArgs::default(), &|k| std::env::var(k).ok())
        .map_err(|e| anyhow!("{}", e.message))?;
    anyhow::ensure!(
        matches!(target, store_select::StoreTarget::Ceph(_)),
        "no Ceph cluster configured (set CEPH_CONF; see tests/ceph/cluster.sh env)"
    );
    Ok(Arc::new(Stores::new(target)))
}

/// The store of `pool` (default namespace).
pub async fn store(stores: &Stores, pool: &str) -> anyhow::Result<Store> {
    stores
        .get(pool, "", true)
        .await
        .map_err(|e| anyhow!("{}", e.message))?
        .ok_or_else(|| anyhow!("pool {pool} not found"))
}

/// A running in-process gateway exporting every image (`--export-all`).
pub struct InProcGateway {
    addr: SocketAddr,
    registry: Arc<rbd_gateway::ImageRegistry>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcGateway {
    /// Binds on 127.0.0.1 (free port) and starts serving.
    pub async fn start(stores: Arc<Stores>, default_pool: &str) -> anyhow::Result<Self> {
        let mut config = GatewayConfig::new(stores, ExportSelection::All);
        config.default_pool = default_pool.to_owned();
        config.listen = vec!["127.0.0.1:0".parse()?];
        let gw = Gateway::bind(config).await?;
        let addr = gw.local_addrs()[0];
        let registry = gw.registry();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        Ok(InProcGateway {
            addr,
            registry,
            stop,
            task,
        })
    }

    /// fio's `--uri` for export `name` (`pool/image[@snap]` or `image`).
    pub fn uri(&self, name: &str) -> String {
        format!("nbd://{}:{}/{}", self.addr.ip(), self.addr.port(), name)
    }

    /// The gateway's own head handle of `name` (opened on first use).
    pub async fn image(&self, name: &str) -> anyhow::Result<Image> {
        self.registry
            .image(name)
            .await
            .map_err(|e| anyhow!("opening {name} in the gateway: {e}"))
    }

    /// The gateway's image registry (its backend op counts: `backend_ops`).
    pub fn registry(&self) -> &rbd_gateway::ImageRegistry {
        &self.registry
    }

    /// Stops serving, flushes and closes every image it opened.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

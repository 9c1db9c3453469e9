//! The gateway process body: NBD listeners, the metrics endpoint, graceful
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rbd_row_cli::spec::DEFAULT_POOL;
use rbd_row_cli::store_select::Stores;
use row_layer::backend::fault::OpCounts;
use row_layer::ImageOptions;
use row_nbd::{serve, ExportRegistry, Metrics, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::registry::{ExportSelection, ImageRegistry};
use crate::stats::MetricsSource;

/// Everything [`run_gateway`] needs.
pub struct GatewayConfig {
    /// The stores of the selected target (local directory or Ceph
    /// cluster), shared with whoever else uses them in this process.
    pub stores: Arc<Stores>,
    /// Pool of export specs that name none (and listed by
    /// `--export-all`); `rbd` by default.
    pub default_pool: String,
    /// Namespace of export specs that name none (`""`, the default).
    pub default_namespace: String,
    /// Handle options for the images the gateway opens.
    pub image_options: ImageOptions,
    /// NBD listen addresses (port 0 picks a free port).
    pub listen: Vec<SocketAddr>,
    /// What is exported.
    pub exports: ExportSelection,
    /// Serve every export read-only.
    pub read_only: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// NBD server tunables (its `metrics` is what `/metrics` renders).
    pub server: ServerConfig,
}

impl GatewayConfig {
    /// Defaults: listen on `127.0.0.1:10809`, pool `rbd`, default
    /// namespace, no metrics, read-write.
    pub fn new(stores: Arc<Stores>, exports: ExportSelection) -> Self {
        GatewayConfig {
            stores,
            default_pool: DEFAULT_POOL.to_owned(),
            default_namespace: String::new(),
            image_options: ImageOptions::default(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 10809))],
            exports,
            read_only: false,
            metrics_listen: None,
            server: ServerConfig::default(),
        }
    }
}

/// A gateway with its sockets bound, not yet serving.
pub struct Gateway {
    registry: Arc<ImageRegistry>,
    listeners: Vec<TcpListener>,
    metrics_listener: Option<TcpListener>,
    server: ServerConfig,
}

impl Gateway {
    /// Validates the exports (opening every configured head, which takes
    /// ownership of it) and binds every socket. The registry wraps the
    /// backend of every store it opens in a counting
    /// [`row_layer::backend::fault::FaultBackend`] (no faults armed) for
    /// `rbd_row_backend_ops_total`.
    pub async fn bind(config: GatewayConfig) -> anyhow::Result<Self> {
        if config.listen.is_empty() {
            return Err(anyhow!("no listen address"));
        }
        let registry = ImageRegistry::with_defaults(
            config.stores,
            &config.default_pool,
            &config.default_namespace,
            config.exports,
            config.read_only,
        )
        .map_err(|e| anyhow!(e))?
        .with_image_options(config.image_options);
        let registry = Arc::new(registry);
        registry
            .refresh_list()
            .await
            .context("listing the images of the store")?;
        for spec in registry.configured() {
            let name = spec.to_string();
            registry
                .image(&name)
                .await
                .with_context(|| format!("export {name}"))?;
        }
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding NBD listener {addr}"))?;
            listeners.push(l);
        }
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics listener {addr}"))?,
            ),
            None => None,
        };
        Ok(Gateway {
            registry,
            listeners,
            metrics_listener,
            server: config.server,
        })
    }

    /// The bound NBD addresses (with the real ports).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The export registry (e.g. to reach the shared image handles).
    pub fn registry(&self) -> Arc<ImageRegistry> {
        self.registry.clone()
    }

    /// The NBD server counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.server.metrics.clone()
    }

    /// Calls that reached the store backend so far.
    pub fn backend_ops(&self) -> OpCounts {
        self.registry.backend_ops()
    }

    /// Serves until `shutdown` resolves; then stops accepting, drains the
    /// connections (bounded by the server's drain timeout), flushes and
    /// closes the images.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut servers = tokio::task::JoinSet::new();
        for listener in self.listeners {
            let registry = self.registry.clone() as Arc<dyn ExportRegistry>;
            let config = self.server.clone();
            let stop = stop_rx.clone();
            servers.spawn(async move { serve(listener, registry, config, stopped(stop)).await });
        }
        let mut aux = tokio::task::JoinSet::new();
        if let Some(l) = self.metrics_listener {
            let source = MetricsSource {
                nbd: self.server.metrics.clone(),
                registry: self.registry.clone(),
            };
            aux.spawn(serve_metrics(l, source, stopped(stop_rx.clone())));
        }
        {
            let registry = self.registry.clone();
            aux.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = registry.refresh_list().await {
                        warn!(error = %e, "refreshing the image list failed");
                    }
                }
            });
        }

        tokio::pin!(shutdown);
        let mut failure: Option<anyhow::Error> = None;
        tokio::select! {
            _ = &mut shutdown => info!("shutdown requested"),
            Some(r) = servers.join_next() => {
                failure = Some(match r {
                    Ok(Ok(())) => anyhow!("an NBD listener stopped unexpectedly"),
                    Ok(Err(e)) => anyhow::Error::new(e).context("NBD listener failed"),
                    Err(e) => anyhow::Error::new(e).context("NBD listener task failed"),
                });
            }
        }
        let _ = stop_tx.send(true);
        while let Some(r) = servers.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "NBD listener failed"),
                Err(e) => warn!(error = %e, "NBD listener task failed"),
            }
        }
        aux.shutdown().await;
        let closed = self.registry.close_all().await;
        info!("gateway stopped");
        if let Some(e) = failure {
            return Err(e);
        }
        closed.context("closing images")
    }
}

/// Binds, serves until `shutdown` resolves, drains, flushes and closes the
/// images. What the `rbd-gateway` binary runs.
pub async fn run_gateway(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let gw = Gateway::bind(config).await?;
    for addr in gw.local_addrs() {
        info!(%addr, "serving NBD");
    }
    if let Some(addr) = gw.metrics_addr() {
        info!(%addr, "serving metrics at /metrics");
    }
    info!(
        max_connections = gw.server.limits.max_connections(),
        max_buffered_bytes = gw.server.limits.max_buffered_bytes(),
        "NBD limits"
    );
    match &gw.server.tls {
        Some(t) if t.acceptor.is_some() => info!(required = t.required, "TLS enabled"),
        _ => {}
    }
    gw.run(shutdown).await
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Minimal HTTP/1.0 responder: `GET /metrics` → Prometheus text format.
async fn serve_metrics(
    listener: TcpListener,
    source: MetricsSource,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let source = source.clone();
                    tokio::spawn(async move {
                        let r = tokio::time::timeout(
                            Duration::from_secs(10),
                            metrics_request(sock, &source),
                        )
                        .await;
                        match r {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => debug!(%peer, error = %e, "metrics request failed"),
                            Err(_) => debug!(%peer, "metrics request timed out"),
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Largest request head accepted by the metrics responder.
const MAX_HTTP_HEAD: usize = 8192;

async fn metrics_request(mut sock: TcpStream, source: &MetricsSource) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n")
            || buf.windows(2).any(|w| w == b"\n\n")
            || buf.len() >= MAX_HTTP_HEAD
        {
            break;
        }
    }
    let line_end = buf.iter().position(|b| *b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET", "/metrics") | ("HEAD", "/metrics") => ("200 OK", source.render().await),
        ("GET", _) | ("HEAD", _) => ("404 Not Found", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "method not allowed\n".to_owned()),
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        sock.write_all(body.as_bytes()).await?;
    }
    sock.shutdown().await
}

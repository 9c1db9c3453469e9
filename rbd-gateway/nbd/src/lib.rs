//! `row-nbd`: an NBD (Network Block Device) server library on tokio,
//! generic over what it serves.
//!
//! * [`ExportBackend`] — one block device (size, read/write/flush/trim/
//!   write-zeroes/cache, block status per metadata context).
//! * [`ExportRegistry`] — name → backend ([`StaticRegistry`] is a ready-made one).
//! * [`serve`] — accept loop with graceful shutdown; [`serve_connection`] for
//!   any already-connected stream.
//! * [`Metrics`] — per-export counters/histograms with a Prometheus renderer.
//! * [`MemExport`] — in-memory backend for tests.
//!
//! Protocol coverage: fixed newstyle handshake with `NO_ZEROES`; options
//! `EXPORT_NAME`, `ABORT`, `LIST`, `STARTTLS` (pluggable [`TlsAcceptor`]),
//! `INFO`, `GO`, `STRUCTURED_REPLY`, `LIST_META_CONTEXT`, `SET_META_CONTEXT`;
//! commands `READ` (structured replies with hole chunks, `DF`), `WRITE`
//! (+`FUA`), `DISC`, `FLUSH`, `TRIM`, `CACHE`, `WRITE_ZEROES` (+`NO_HOLE`,
//! `FAST_ZERO`), `BLOCK_STATUS` (+`REQ_ONE`). Requests are pipelined and
//! answered out of order. Extended headers are not supported (answered
//! `ERR_UNSUP`, clients fall back).
//!
//! ```no_run
//! use std::sync::Arc;
//! use row_nbd::{serve, ExportBackend, MemExport, ServerConfig, StaticRegistry};
//!
//! # async fn run() -> std::io::Result<()> {
//! let registry = Arc::new(StaticRegistry::new());
//! registry.insert("disk", Arc::new(MemExport::new(64 << 20)) as Arc<dyn ExportBackend>);
//! let config = ServerConfig::default();
//! let metrics = config.metrics.clone(); // metrics.render_prometheus() for /metrics
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:10809").await?;
//! serve(listener, registry, config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # drop(metrics);
//! # Ok(())
//! # }
//! ```

#![warn(clippy::unwrap_used)]
mod backend;
mod config;
mod handshake;
mod metrics;
pub mod proto;
mod server;
mod transmission;

pub use backend::{
    match_meta_contexts, ExportBackend, ExportError, ExportRegistry, ExportResult, Extent,
    MemExport, NbdErrno, StaticRegistry, ZeroFlags,
};
pub use config::{
    AsyncStream, BoxStream, ServerConfig, ServerLimits, TlsAcceptor, TlsConfig,
    DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_CONNECTIONS,
};
pub use metrics::{ExportMetrics, Metrics, Op, OpStats, LATENCY_BUCKETS};
pub use server::{serve, serve_connection};

/// Re-exported so backends can name the future type without depending on `futures`.
pub use futures::future::BoxFuture;

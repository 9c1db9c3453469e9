//! `rbd-gateway`: serve row-layer images over NBD.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::{ArgGroup, Parser};
use rbd_gateway::{run_gateway, ExportSelection, GatewayConfig};
use row_layer::backend::local::LocalBackend;
use row_layer::Store;
use tracing_subscriber::EnvFilter;

/// Serve row-layer images over NBD.
///
/// Export names are `[pool/[namespace/]]image[@snap]`; the local store has a
/// single pool and namespace, so those parts are accepted and ignored.
/// `image` is the read-write head (shared by all connections), `image@snap`
/// a read-only snapshot view.
#[derive(Parser, Debug)]
#[command(name = "rbd-gateway", version)]
#[command(group(ArgGroup::new("selection").required(true).args(["exports", "export_all"])))]
struct Args {
    /// Store directory [default: $XDG_DATA_HOME/rbd-row/store or
    /// ~/.local/share/rbd-row/store].
    #[arg(long, env = "RBD_ROW_STORE", value_name = "DIR")]
    store: Option<PathBuf>,
    /// NBD listen address (repeatable).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10809")]
    listen: Vec<String>,
    /// Serve this export (repeatable). `image` also permits its snapshots as
    /// `image@snap`.
    #[arg(long = "export", value_name = "SPEC")]
    exports: Vec<String>,
    /// Serve every image of the store.
    #[arg(long)]
    export_all: bool,
    /// Refuse writes on every export.
    #[arg(long)]
    read_only: bool,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))
}

fn default_store_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    anyhow!("neither --store, RBD_ROW_STORE, XDG_DATA_HOME nor HOME is set")
                })?;
            PathBuf::from(home).join(".local/share")
        }
    };
    Ok(base.join("rbd-row/store"))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let dir = match args.store {
        Some(d) => d,
        None => {
            let d = default_store_dir()?;
            eprintln!("rbd-gateway: using the default store {}", d.display());
            d
        }
    };
    let backend = LocalBackend::open(&dir)
        .map_err(|e| anyhow!("opening the store {}: {e}", dir.display()))?;
    let store = Store::new(Arc::new(backend));
    let exports = if args.export_all {
        ExportSelection::All
    } else {
        ExportSelection::Only(args.exports)
    };
    let mut config = GatewayConfig::new(store, exports);
    config.listen = args
        .listen
        .iter()
        .map(|a| resolve(a))
        .collect::<anyhow::Result<_>>()?;
    config.read_only = args.read_only;
    config.metrics_listen = args.metrics.as_deref().map(resolve).transpose()?;
    run_gateway(config, shutdown_signal()).await
}

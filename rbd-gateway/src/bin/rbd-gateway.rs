//! `rbd-gateway`: serve row-layer images over NBD.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::{ArgGroup, Parser};
use rbd_gateway::{run_gateway, ExportSelection, GatewayConfig, TlsFiles};
use rbd_row_cli::spec::DEFAULT_POOL;
use rbd_row_cli::store_select::{self, StoreArgs, StoreTarget, Stores};
use tracing_subscriber::EnvFilter;

/// Serve row-layer images over NBD.
///
/// Export names are `[pool/[namespace/]]image[@snap]`, resolved as
/// `rbd-row` resolves image specs (pool `rbd` unless `--pool`); `image` is
/// the read-write head (shared by all connections), `image@snap` a
/// read-only snapshot view.
///
/// The store is chosen as `rbd-row` chooses it: `--store DIR` (the local
/// store, pool P in DIR/P), else `-c/--conf`, `--id`, `--name`, `--keyring`,
/// `--cluster` (Ceph), else `$RBD_ROW_STORE`, else `$CEPH_CONF` or
/// `$CEPH_ARGS` naming a conf, else /etc/ceph/ceph.conf, else the default
/// local store ($XDG_DATA_HOME/rbd-row/store or ~/.local/share/rbd-row/store).
#[derive(Parser, Debug)]
#[command(name = "rbd-gateway", version)]
#[command(group(ArgGroup::new("selection").required(true).args(["exports", "export_all"])))]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Pool of exports that name none, and the pool `--export-all` lists.
    #[arg(short = 'p', long, value_name = "POOL", default_value = DEFAULT_POOL)]
    pool: String,
    /// Namespace of exports that name none, and the namespace
    /// `--export-all` lists [default: the default namespace].
    #[arg(long, value_name = "NAMESPACE", default_value = "")]
    namespace: String,
    /// NBD listen address (repeatable).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10809")]
    listen: Vec<String>,
    /// Serve this export (repeatable). `image` also permits its snapshots as
    /// `image@snap`.
    #[arg(long = "export", value_name = "SPEC")]
    exports: Vec<String>,
    /// Serve every image of the store: NBD_OPT_LIST announces the images of
    /// `--pool`/`--namespace`; any image of any pool may be opened.
    #[arg(long)]
    export_all: bool,
    /// Refuse writes on every export.
    #[arg(long)]
    read_only: bool,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// TLS server certificate chain (PEM, leaf first); enables
    /// NBD_OPT_STARTTLS. TLS is then required unless --tls-optional.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to; with
    /// it every client must present a certificate.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Refuse every option before STARTTLS (FORCEDTLS; the default with
    /// --tls-cert).
    #[arg(long, requires = "tls_cert", conflicts_with = "tls_optional")]
    tls_required: bool,
    /// Offer TLS but also serve plain-text clients.
    #[arg(long, requires = "tls_cert")]
    tls_optional: bool,
    /// Most NBD connections open at once, over all listeners; more are
    /// closed right after accept (and logged).
    #[arg(long, value_name = "N", default_value_t = row_nbd::DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_max_connections)]
    max_connections: usize,
    /// Most READ/WRITE payload bytes buffered by all connections together
    /// (K/M/G suffixes); a connection waits for budget before reading a
    /// write's payload or starting a read. Each connection also stays
    /// within 256 MiB.
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_budget)]
    max_buffered_bytes: u64,
    /// Defragment each served head in the background: a pass this many
    /// seconds after the previous one ended rewrites the objects whose
    /// sequential read takes many RADOS reads (0: never). Snapshots keep
    /// their data, so rewritten grains they hold are stored twice until
    /// those snapshots are removed.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    defrag_interval: u64,
    /// With --defrag-interval: rewrite an object when reading all of it
    /// takes at least this many RADOS reads.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = parse_min_reads)]
    defrag_min_reads: usize,
    /// With --defrag-interval: most bytes each image's pass rewrites per
    /// second (K/M/G suffixes; 0: no limit).
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_rate)]
    defrag_bytes_per_sec: u64,
}

fn parse_min_reads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n < 2 => Err("must be at least 2".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_rate(s: &str) -> Result<u64, String> {
    rbd_row_cli::size::parse_size(s, 1)
        .map_err(|e| e.message.trim_start_matches("rbd-row: ").to_owned())
}

fn parse_max_connections(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_budget(s: &str) -> Result<u64, String> {
    match rbd_row_cli::size::parse_size(s, 1) {
        Ok(0) => Err("must be at least 1 byte".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.message.trim_start_matches("rbd-row: ").to_owned()),
    }
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Bad key material fails before the store is touched.
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => {
            let files = TlsFiles {
                cert,
                key,
                client_ca: args.tls_ca,
                required: !args.tls_optional,
            };
            Some(files.load()?)
        }
        _ => None,
    };
    let target = store_select::select(&args.store, &|k| std::env::var(k).ok())
        .map_err(|e| anyhow!("{}", e.message.trim_start_matches("rbd-row: ")))?;
    match &target {
        StoreTarget::Local {
            dir,
            is_default: true,
        } => eprintln!(
            "rbd-gateway: no Ceph cluster or store configured; using the local store {} \
             (choose one with --store DIR, RBD_ROW_STORE, -c PATH or CEPH_CONF)",
            dir.display()
        ),
        StoreTarget::Local { dir, .. } => {
            tracing::info!(dir = %dir.display(), "local store");
        }
        StoreTarget::Ceph(c) => tracing::info!(
            conf = ?c.conf,
            client = ?c.client_name,
            cluster = ?c.cluster,
            "Ceph store"
        ),
    }
    let stores = Arc::new(Stores::new(target));
    let exports = if args.export_all {
        ExportSelection::All
    } else {
        ExportSelection::Only(args.exports)
    };
    let mut config = GatewayConfig::new(stores, exports);
    config.default_pool = args.pool;
    config.default_namespace = args.namespace;
    config.listen = args
        .listen
        .iter()
        .map(|a| resolve(a))
        .collect::<anyhow::Result<_>>()?;
    config.read_only = args.read_only;
    config.image_options.defrag_interval = std::time::Duration::from_secs(args.defrag_interval);
    config.image_options.defrag = row_layer::DefragOptions {
        min_reads: args.defrag_min_reads,
        bytes_per_sec: args.defrag_bytes_per_sec,
    };
    config.metrics_listen = args.metrics.as_deref().map(resolve).transpose()?;
    config.server.tls = tls;
    config.server.limits = Arc::new(row_nbd::ServerLimits::new(
        args.max_connections,
        args.max_buffered_bytes,
    ));
    run_gateway(config, shutdown_signal()).await
}

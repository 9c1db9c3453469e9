//! Listener loop and per-connection driver.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backend::ExportRegistry;
use crate::config::{wait_true, AsyncStream, BoxStream, ServerConfig};
use crate::handshake::{negotiate, HandshakeOutcome};
use crate::transmission::transmission;

/// Accept connections on `listener` until `shutdown` resolves, then stop
/// accepting, ask every connection to finish its in-flight requests and
/// close, and wait (at most [`ServerConfig::drain_timeout`]) for them.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<dyn ExportRegistry>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "nbd server listening");
    }
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let Some(slot) = config.limits.try_admit() else {
                        config.metrics.conn_refused();
                        warn!(%peer, limit = config.limits.max_connections(),
                            "refusing NBD connection: connection limit reached");
                        drop(sock);
                        continue;
                    };
                    let _ = sock.set_nodelay(true);
                    let registry = registry.clone();
                    let config = config.clone();
                    let stop = stop_rx.clone();
                    conns.spawn(async move {
                        serve_connection(sock, peer.to_string(), registry, config, stop).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    info!(connections = conns.len(), "nbd server shutting down");
    let _ = stop_tx.send(true);
    let deadline = tokio::time::sleep(config.drain_timeout);
    tokio::pin!(deadline);
    while !conns.is_empty() {
        tokio::select! {
            _ = conns.join_next() => {}
            _ = &mut deadline => {
                warn!(connections = conns.len(), "drain timeout, aborting connections");
                conns.abort_all();
                while conns.join_next().await.is_some() {}
            }
        }
    }
    Ok(())
}

/// Serve one already-accepted connection (any stream type). `shutdown`
/// flipping to `true` makes the connection stop reading requests, finish the
/// in-flight ones and close. Never panics on client input.
pub async fn serve_connection<S: AsyncStream>(
    stream: S,
    peer: String,
    registry: Arc<dyn ExportRegistry>,
    config: Arc<ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let metrics = config.metrics.clone();
    metrics.conn_accepted();
    let started = Instant::now();
    debug!(%peer, "nbd connection accepted");
    let stream: BoxStream = Box::new(stream);
    let hs = tokio::select! {
        r = tokio::time::timeout(config.handshake_timeout, negotiate(stream, &*registry, &config)) => match r {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("handshake timeout".to_owned()),
        },
        _ = wait_true(&mut shutdown) => Err("server shutting down".to_owned()),
    };
    match hs {
        Ok(HandshakeOutcome::Transmission(stream, neg)) => {
            let export = neg.export_name.clone();
            let em = metrics.export(&export);
            em.conn_opened();
            info!(%peer, export = %export, structured = neg.structured,
                contexts = neg.contexts.len(), "nbd connection start");
            let res = transmission(stream, neg, &config, em.clone(), shutdown).await;
            em.conn_closed();
            match res {
                Ok(stats) => info!(%peer, export = %export, requests = stats.requests,
                    elapsed_ms = started.elapsed().as_millis() as u64, "nbd connection end"),
                Err(e) => info!(%peer, export = %export, error = %e,
                    elapsed_ms = started.elapsed().as_millis() as u64, "nbd connection end"),
            }
        }
        Ok(HandshakeOutcome::Closed(reason)) => {
            metrics.handshake_failed();
            info!(%peer, export = "", reason = %reason, "nbd connection end during handshake");
        }
        Err(e) => {
            metrics.handshake_failed();
            info!(%peer, export = "", error = %e, "nbd connection end during handshake");
        }
    }
    metrics.conn_done();
}

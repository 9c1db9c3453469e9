//! What the server is configured with and what every session module
//! shares: the stream type, TLS, limits, timeouts. It sits below the
//! handshake, transmission and listener modules, which all depend on it and
//! never on each other's upper layers.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Any bidirectional byte stream the server can speak NBD over (TCP, Unix
/// socket, TLS stream, in-memory duplex, ...).
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncStream for T {}

/// Type-erased stream; used so that `NBD_OPT_STARTTLS` can replace the plain
/// stream with a TLS one mid-handshake.
pub type BoxStream = Box<dyn AsyncStream>;

/// Upgrades a plain stream to TLS after the server has acknowledged
/// `NBD_OPT_STARTTLS`. Implement with `tokio_rustls::TlsAcceptor`:
/// `Box::pin(async move { Ok(Box::new(acceptor.accept(stream).await?) as BoxStream) })`.
pub trait TlsAcceptor: Send + Sync + 'static {
    /// Perform the server side of the TLS handshake on `stream`.
    fn accept(&self, stream: BoxStream) -> BoxFuture<'static, io::Result<BoxStream>>;
}

/// TLS policy of the server.
#[derive(Clone)]
pub struct TlsConfig {
    /// FORCEDTLS mode: every option other than `STARTTLS`/`ABORT` is answered
    /// with `NBD_REP_ERR_TLS_REQD` until TLS is up; `EXPORT_NAME` without TLS
    /// closes the connection. When false, TLS is optional (offered if an
    /// acceptor is configured).
    pub required: bool,
    /// The upgrade implementation; without it `STARTTLS` is refused with
    /// `NBD_REP_ERR_POLICY` (so with `required` no client can get in).
    pub acceptor: Option<Arc<dyn TlsAcceptor>>,
}

/// Limits shared by every connection of a server: how many connections may
/// be open at once, and how many READ/WRITE payload bytes all of them
/// together may buffer. Clones of a [`ServerConfig`] share one
/// `Arc<ServerLimits>`, so several listeners served from clones of one
/// config (as the gateway does) share the limits too.
pub struct ServerLimits {
    max_connections: usize,
    connections: Arc<Semaphore>,
    max_buffered_bytes: u64,
    /// Permits = bytes; a request takes `min(its payload, max_buffered_bytes)`.
    bytes: Arc<Semaphore>,
}

/// Default of [`ServerLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Default of [`ServerLimits::max_buffered_bytes`] (512 MiB).
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 512 << 20;

impl ServerLimits {
    /// At most `max_connections` open connections (any phase; more are
    /// closed right after `accept`, with a log line) and at most
    /// `max_buffered_bytes` of READ/WRITE payload buffered by all
    /// connections together (a connection waits for budget before it reads
    /// a write's payload or starts a read). Zero is taken as one.
    pub fn new(max_connections: usize, max_buffered_bytes: u64) -> Self {
        let max_connections = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let max_buffered_bytes = max_buffered_bytes.clamp(1, Semaphore::MAX_PERMITS as u64);
        ServerLimits {
            max_connections,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_buffered_bytes,
            bytes: Arc::new(Semaphore::new(max_buffered_bytes as usize)),
        }
    }

    /// The connection limit.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The global budget of buffered payload bytes.
    pub fn max_buffered_bytes(&self) -> u64 {
        self.max_buffered_bytes
    }

    /// Connections currently admitted.
    pub fn connections(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }

    /// Payload bytes currently reserved by requests of all connections.
    pub fn buffered_bytes(&self) -> u64 {
        self.max_buffered_bytes - self.bytes.available_permits() as u64
    }

    /// A connection slot, if one is free.
    pub(crate) fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// The shared byte budget and the most one request may take from it.
    pub(crate) fn byte_budget(&self) -> (Arc<Semaphore>, u32) {
        (
            self.bytes.clone(),
            u32::try_from(self.max_buffered_bytes).unwrap_or(u32::MAX),
        )
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits::new(DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_BUFFERED_BYTES)
    }
}

/// Server configuration.
#[derive(Clone)]
pub struct ServerConfig {
    /// Maximum READ/WRITE payload advertised and enforced (default 32 MiB).
    pub max_payload: u32,
    /// Requests processed concurrently per connection (default 64).
    pub max_in_flight: usize,
    /// Upper bound on READ/WRITE payload bytes buffered per connection
    /// (default 256 MiB); a request larger than this still runs, alone.
    /// All connections together are bounded by [`ServerConfig::limits`].
    pub max_in_flight_bytes: u32,
    /// Connection limit and global byte budget, shared by every connection
    /// (and by clones of this config). Default: 128 connections, 512 MiB.
    pub limits: Arc<ServerLimits>,
    /// Time allowed for the whole handshake phase (default 30 s).
    pub handshake_timeout: Duration,
    /// How long [`serve`] waits for connections to drain after shutdown.
    pub drain_timeout: Duration,
    /// Use `base:allocation` to answer structured reads with hole chunks.
    pub sparse_reads: bool,
    /// Oversized WRITE payloads up to this size are read and discarded (the
    /// request then fails with `EOVERFLOW`); larger ones close the connection.
    pub max_discard: u64,
    /// TLS policy; `None` = NOTLS (`STARTTLS` answered with `ERR_POLICY`).
    pub tls: Option<TlsConfig>,
    /// Where counters go.
    pub metrics: Arc<Metrics>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_payload: 32 << 20,
            max_in_flight: 64,
            max_in_flight_bytes: 256 << 20,
            limits: Arc::new(ServerLimits::default()),
            handshake_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            sparse_reads: true,
            max_discard: 64 << 20,
            tls: None,
            metrics: Arc::new(Metrics::new()),
        }
    }
}

/// Resolves once the watch holds `true` (or its sender is gone).
pub(crate) async fn wait_true(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            // Sender dropped without signalling: never resolve.
            futures::future::pending::<()>().await;
        }
    }
}

//! Server-wide limits over raw sockets: the connection limit refuses extra
//! connections cleanly, and the global budget of buffered payload bytes
//! holds across connections (a connection waits for budget before it reads
//! a payload or starts a read).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{timed, Client, TestServer};
use row_nbd::proto::*;
use row_nbd::{
    BoxFuture, ExportBackend, ExportResult, Extent, MemExport, ServerConfig, ServerLimits,
    StaticRegistry, ZeroFlags,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

/// Waits (up to 10 s) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The peer closes without sending anything (no NBD greeting).
async fn refused(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("refused connection is closed promptly");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "a refused connection got bytes: {r:?}"
    );
}

fn server_with(
    limits: ServerLimits,
    export: Arc<dyn ExportBackend>,
) -> (Arc<StaticRegistry>, ServerConfig) {
    let reg = Arc::new(StaticRegistry::new());
    reg.insert("disk", export);
    let cfg = ServerConfig {
        limits: Arc::new(limits),
        ..ServerConfig::default()
    };
    (reg, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_extra_connections_cleanly() {
    let (reg, cfg) = server_with(
        ServerLimits::new(2, 64 * MIB),
        Arc::new(MemExport::new(MIB)),
    );
    let srv = TestServer::start(reg, cfg).await;
    let limits = srv.config.limits.clone();
    timed(async {
        // One in transmission, one still negotiating: both count.
        let (mut a, _) = Client::negotiate(srv.addr, "disk", false, &[]).await;
        let b = Client::connect_hello(srv.addr).await;
        until("two connections admitted", || limits.connections() == 2).await;
        refused(srv.addr).await;
        refused(srv.addr).await;
        assert_eq!(srv.config.metrics.refused(), 2);
        assert!(srv
            .config
            .metrics
            .render_prometheus()
            .contains("nbd_connections_refused_total 2"));
        // The admitted sessions are unaffected.
        a.send_req(0, CMD_WRITE, 1, 0, 3, b"abc").await;
        assert_eq!(a.read_status().await, (1, 0));
        // Closing one frees its slot for a new client.
        drop(b);
        until("slot released", || limits.connections() == 1).await;
        let (mut c, _) = Client::negotiate(srv.addr, "disk", false, &[]).await;
        assert_eq!(c.simple_read(2, 0, 3).await.unwrap(), b"abc");
        refused(srv.addr).await;
        assert_eq!(srv.config.metrics.refused(), 3);
        for cl in [&mut a, &mut c] {
            cl.send_req(0, CMD_DISC, 9, 0, 0, &[]).await;
            cl.expect_closed().await;
        }
        until("all slots released", || limits.connections() == 0).await;
    })
    .await;
    srv.shutdown().await;
}

/// Reads and writes wait on `gate` inside the backend, so requests stay in
/// flight until the test lets them go; it records the payload bytes held.
struct GatedExport {
    gate: Semaphore,
    started: AtomicU64,
    held: AtomicU64,
    max_held: AtomicU64,
}

impl GatedExport {
    fn new() -> Self {
        GatedExport {
            gate: Semaphore::new(0),
            started: AtomicU64::new(0),
            held: AtomicU64::new(0),
            max_held: AtomicU64::new(0),
        }
    }

    async fn pass(&self, bytes: u64) {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.held.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.max_held.fetch_max(now, Ordering::SeqCst);
        self.gate.acquire().await.expect("gate").forget();
        self.held.fetch_sub(bytes, Ordering::SeqCst);
    }
}

impl ExportBackend for GatedExport {
    fn size(&self) -> u64 {
        64 * MIB
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, _off: u64, len: u32) -> BoxFuture<'_, ExportResult<Bytes>> {
        Box::pin(async move {
            self.pass(u64::from(len)).await;
            Ok(Bytes::from(vec![0u8; len as usize]))
        })
    }
    fn write(&self, _off: u64, data: Bytes, _fua: bool) -> BoxFuture<'_, ExportResult<()>> {
        Box::pin(async move {
            self.pass(data.len() as u64).await;
            Ok(())
        })
    }
    fn flush(&self) -> BoxFuture<'_, ExportResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn trim(&self, _off: u64, _len: u32, _fua: bool) -> BoxFuture<'_, ExportResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn write_zeroes(
        &self,
        _off: u64,
        _len: u32,
        _flags: ZeroFlags,
    ) -> BoxFuture<'_, ExportResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn block_status(
        &self,
        _context: &str,
        _off: u64,
        _len: u32,
    ) -> BoxFuture<'_, ExportResult<Vec<Extent>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn meta_contexts(&self, _query: &str) -> Vec<String> {
        Vec::new()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_byte_budget_holds_across_connections() {
    let gated = Arc::new(GatedExport::new());
    let (reg, cfg) = server_with(ServerLimits::new(16, 64 * KIB), gated.clone());
    let srv = TestServer::start(reg, cfg).await;
    let limits = srv.config.limits.clone();
    timed(async {
        let (mut a, _) = Client::negotiate(srv.addr, "disk", false, &[]).await;
        let (mut b, _) = Client::negotiate(srv.addr, "disk", false, &[]).await;
        let payload = vec![1u8; 32 * KIB as usize];
        // A fills the budget with two 32 KiB writes.
        a.send_req(0, CMD_WRITE, 1, 0, 32 * KIB as u32, &payload)
            .await;
        a.send_req(0, CMD_WRITE, 2, MIB, 32 * KIB as u32, &payload)
            .await;
        until("A's writes in the backend", || {
            gated.started.load(Ordering::SeqCst) == 2
        })
        .await;
        assert_eq!(limits.buffered_bytes(), 64 * KIB);
        // B (within its own 256 MiB) must wait for the shared budget.
        b.send_req(0, CMD_WRITE, 3, 2 * MIB, 32 * KIB as u32, &payload)
            .await;
        b.send_req(0, CMD_READ, 4, 0, 4 * KIB as u32, &[]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(gated.started.load(Ordering::SeqCst), 2, "B ran over budget");
        assert_eq!(limits.buffered_bytes(), 64 * KIB);

        // One of A's writes finishes: B's write gets its 32 KiB, its read
        // (4 KiB more) still waits.
        gated.gate.add_permits(1);
        let (h, e) = a.read_status().await;
        assert!(e == 0 && (h == 1 || h == 2));
        until("B's write in the backend", || {
            gated.started.load(Ordering::SeqCst) == 3
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            gated.started.load(Ordering::SeqCst),
            3,
            "B's read ran over budget"
        );

        // Let everything go.
        gated.gate.add_permits(100);
        let (h, e) = a.read_status().await;
        assert!(e == 0 && (h == 1 || h == 2));
        // B's write and read, in either order.
        let mut seen = Vec::new();
        for _ in 0..2 {
            match b.read_reply().await {
                common::Reply::Simple { err: 0, handle: 3 } => seen.push(3),
                common::Reply::Simple { err: 0, handle: 4 } => {
                    let mut data = [0u8; 4096];
                    b.s.read_exact(&mut data).await.expect("read data");
                    seen.push(4);
                }
                r => panic!("unexpected {r:?}"),
            }
        }
        seen.sort();
        assert_eq!(seen, vec![3, 4]);
        assert!(gated.max_held.load(Ordering::SeqCst) <= 64 * KIB);
        until("budget returned", || limits.buffered_bytes() == 0).await;

        // A request larger than the whole budget still runs (alone).
        a.send_req(
            0,
            CMD_WRITE,
            5,
            0,
            128 * KIB as u32,
            &vec![2u8; 128 * KIB as usize],
        )
        .await;
        assert_eq!(a.read_status().await, (5, 0));
        for cl in [&mut a, &mut b] {
            cl.send_req(0, CMD_DISC, 9, 0, 0, &[]).await;
        }
    })
    .await;
    srv.shutdown().await;
}

//! Raw-socket protocol tests against the in-process server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{timed, Client, Reply, TestServer};
use row_nbd::proto::*;
use row_nbd::{
    BoxFuture, BoxStream, ExportBackend, ExportResult, Extent, MemExport, ServerConfig,
    StaticRegistry, TlsAcceptor, TlsConfig, ZeroFlags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EOVERFLOW: u32 = 75;
const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_structured_session() {
    let (srv, mem) = TestServer::with_mem(16 * MIB).await;
    timed(async {
        let mut c = Client::connect_hello(srv.addr).await;
        // LIST
        c.send_opt(OPT_LIST, &[]).await;
        let names: Vec<String> = c
            .opt_replies(OPT_LIST)
            .await
            .into_iter()
            .filter(|(t, _)| *t == REP_SERVER)
            .map(|(_, d)| String::from_utf8(d[4..].to_vec()).unwrap())
            .collect();
        assert_eq!(names, vec!["disk".to_owned(), "ro".to_owned()]);
        // INFO (stays in negotiation), with name + description; empty name = default.
        let gi = c
            .info_or_go(
                OPT_INFO,
                "",
                &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
            )
            .await
            .unwrap();
        assert_eq!(gi.size, 16 * MIB);
        assert_eq!(gi.name.as_deref(), Some("disk"));
        assert_eq!(gi.description.as_deref(), Some("test disk"));
        assert_eq!(gi.block_size, Some((1, 4096, 32 << 20)));
        assert_eq!(
            gi.flags & TF_SEND_DF,
            0,
            "DF only once structured replies are negotiated"
        );
        c.structured().await;
        let (fin, listed) = c.meta(OPT_LIST_META_CONTEXT, "disk", &[]).await;
        assert_eq!(fin, REP_ACK);
        assert_eq!(listed, vec![(0, BASE_ALLOCATION.to_owned())]);
        let (fin, listed) = c.meta(OPT_LIST_META_CONTEXT, "disk", &["base:"]).await;
        assert_eq!((fin, listed.len()), (REP_ACK, 1));
        let (fin, set) = c
            .meta(
                OPT_SET_META_CONTEXT,
                "disk",
                &["base:allocation", "qemu:dirty-bitmap:x"],
            )
            .await;
        assert_eq!(fin, REP_ACK);
        assert_eq!(set.len(), 1);
        let ctx_id = set[0].0;
        let gi = c.info_or_go(OPT_GO, "disk", &[]).await.unwrap();
        let want = TF_HAS_FLAGS
            | TF_SEND_FLUSH
            | TF_SEND_FUA
            | TF_SEND_TRIM
            | TF_SEND_WRITE_ZEROES
            | TF_SEND_DF
            | TF_CAN_MULTI_CONN
            | TF_SEND_CACHE
            | TF_SEND_FAST_ZERO;
        assert_eq!(gi.flags, want);

        // WRITE + FUA, then READ back.
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 + 1).collect();
        c.send_req(CMD_FLAG_FUA, CMD_WRITE, 1, MIB, 8192, &data)
            .await;
        assert_eq!(c.read_status().await, (1, 0));
        let (got, holes, datas) = c.sread(0, 2, MIB, 8192).await.unwrap();
        assert_eq!(got, data);
        assert_eq!((holes, datas), (0, 1));
        // A read spanning zeroes and data gets hole chunks.
        let (got, holes, datas) = c
            .sread(0, 3, MIB - 65536, 65536 + 8192 + 65536)
            .await
            .unwrap();
        assert_eq!(&got[65536..65536 + 8192], &data[..]);
        assert!(
            got[..65536].iter().all(|b| *b == 0) && got[65536 + 8192..].iter().all(|b| *b == 0)
        );
        assert_eq!((holes, datas), (2, 1));
        // DF: a single content chunk with explicit zeroes.
        let (got2, holes, datas) = c
            .sread(CMD_FLAG_DF, 4, MIB - 65536, 65536 + 8192 + 65536)
            .await
            .unwrap();
        assert_eq!(got2, got);
        assert_eq!((holes, datas), (0, 1));
        // All-zero read → a single hole chunk.
        let (z, holes, datas) = c.sread(0, 5, 8 * MIB, 1 << 20).await.unwrap();
        assert!(z.iter().all(|b| *b == 0));
        assert_eq!((holes, datas), (1, 0));
        // Zero-length read.
        assert_eq!(c.sread(0, 6, 0, 0).await.unwrap().0.len(), 0);

        // BLOCK_STATUS
        let bs = c
            .block_status(0, 7, MIB - 4096, 4096 + 8192 + 4096)
            .await
            .unwrap();
        assert_eq!(bs, vec![(ctx_id, vec![(4096, 3), (8192, 0), (4096, 3)])]);
        let bs = c
            .block_status(CMD_FLAG_REQ_ONE, 8, MIB - 4096, 16384)
            .await
            .unwrap();
        assert_eq!(bs, vec![(ctx_id, vec![(4096, 3)])]);

        // WRITE_ZEROES (NO_HOLE + FAST_ZERO) on half, TRIM the other half.
        c.send_req(
            CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_WRITE_ZEROES,
            9,
            MIB,
            4096,
            &[],
        )
        .await;
        assert_eq!(c.read_status().await, (9, 0));
        c.send_req(CMD_FLAG_FUA, CMD_TRIM, 10, MIB + 4096, 4096, &[])
            .await;
        assert_eq!(c.read_status().await, (10, 0));
        c.send_req(0, CMD_FLUSH, 11, 0, 0, &[]).await;
        assert_eq!(c.read_status().await, (11, 0));
        c.send_req(0, CMD_CACHE, 12, 0, 65536, &[]).await;
        assert_eq!(c.read_status().await, (12, 0));
        let bs = c.block_status(0, 13, MIB, 8192).await.unwrap();
        assert_eq!(bs, vec![(ctx_id, vec![(8192, 3)])]);
        assert!(mem.snapshot().iter().all(|b| *b == 0));

        // Pipelining: 32 writes then 32 reads without waiting.
        for i in 0..32u64 {
            let p = vec![i as u8 + 1; 4096];
            c.send_req(0, CMD_WRITE, 100 + i, 2 * MIB + i * 4096, 4096, &p)
                .await;
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..32 {
            let (h, e) = c.read_status().await;
            assert_eq!(e, 0);
            assert!(seen.insert(h));
        }
        for i in 0..32u64 {
            c.send_req(0, CMD_READ, 200 + i, 2 * MIB + i * 4096, 4096, &[])
                .await;
        }
        let mut done = 0;
        while done < 32 {
            match c.read_reply().await {
                Reply::Chunk {
                    flags,
                    typ,
                    handle,
                    payload,
                } => {
                    assert_eq!(typ, REPLY_TYPE_OFFSET_DATA);
                    assert!(flags & REPLY_FLAG_DONE != 0);
                    let i = handle - 200;
                    assert!(payload[8..].iter().all(|b| *b == i as u8 + 1));
                    done += 1;
                }
                r => panic!("{r:?}"),
            }
        }
        // DISC: server closes.
        c.send_req(0, CMD_DISC, 999, 0, 0, &[]).await;
        c.expect_closed().await;
        let snap = mem.snapshot();
        assert!(
            snap[2 * MIB as usize + 31 * 4096..2 * MIB as usize + 32 * 4096]
                .iter()
                .all(|b| *b == 32)
        );

        // Metrics were recorded for the export.
        let m = srv.config.metrics.get("disk").expect("metrics for disk");
        assert!(m.op(row_nbd::Op::Write).ops() >= 33);
        assert!(m.op(row_nbd::Op::Read).bytes() >= 32 * 4096);
        let text = srv.config.metrics.render_prometheus();
        assert!(
            text.contains("nbd_requests_total{export=\"disk\",op=\"write\"} 33"),
            "{text}"
        );
        assert!(text.contains(
            "nbd_request_duration_seconds_bucket{export=\"disk\",op=\"flush\",le=\"+Inf\"} 1"
        ));
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_name_and_simple_replies() {
    let (srv, _mem) = TestServer::with_mem(MIB).await;
    timed(async {
        // Without NO_ZEROES: 8 + 2 + 124 zero bytes.
        let mut c = Client::connect(srv.addr).await;
        c.hello(FLAG_C_FIXED_NEWSTYLE).await;
        c.send_opt(OPT_EXPORT_NAME, b"disk").await;
        let size = c.s.read_u64().await.unwrap();
        let flags = c.s.read_u16().await.unwrap();
        let mut z = [1u8; 124];
        c.s.read_exact(&mut z).await.unwrap();
        assert_eq!(size, MIB);
        assert!(z.iter().all(|b| *b == 0));
        assert_eq!(flags & TF_SEND_DF, 0);
        assert!(flags & TF_CAN_MULTI_CONN != 0);
        c.send_req(0, CMD_WRITE, 1, 512, 3, b"abc").await;
        assert_eq!(c.read_status().await, (1, 0));
        assert_eq!(c.simple_read(2, 510, 7).await.unwrap(), b"\0\0abc\0\0");
        assert_eq!(c.simple_read(3, 0, 0).await.unwrap(), b"");
        // Errors without structured replies: simple reply, no payload.
        assert_eq!(c.simple_read(4, MIB, 1).await, Err(EINVAL));
        c.send_req(CMD_FLAG_DF, CMD_READ, 5, 0, 512, &[]).await;
        assert_eq!(c.read_status().await, (5, EINVAL));
        c.send_req(0, CMD_BLOCK_STATUS, 6, 0, 512, &[]).await;
        assert_eq!(c.read_status().await, (6, EINVAL));
        assert_eq!(c.simple_read(7, 512, 3).await.unwrap(), b"abc");

        // With NO_ZEROES and the empty (default) name: only 10 bytes.
        let mut c = Client::connect_hello(srv.addr).await;
        c.send_opt(OPT_EXPORT_NAME, b"").await;
        assert_eq!(c.s.read_u64().await.unwrap(), MIB);
        let _ = c.s.read_u16().await.unwrap();
        assert_eq!(c.simple_read(1, 512, 3).await.unwrap(), b"abc");

        // Unknown export via EXPORT_NAME: connection is closed.
        let mut c = Client::connect_hello(srv.addr).await;
        c.send_opt(OPT_EXPORT_NAME, b"nope").await;
        c.expect_closed().await;
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_keep_session_usable() {
    let (srv, mem) = TestServer::with_mem(4 * MIB).await;
    timed(async {
        let (mut c, _) = Client::negotiate(srv.addr, "disk", true, &[]).await;
        // Oversized read → EOVERFLOW error chunk.
        assert_eq!(c.sread(0, 1, 0, (32 << 20) + 1).await, Err(EOVERFLOW));
        // Oversized write: payload is consumed, request fails, stream stays in sync.
        let big = vec![0x77u8; (32 << 20) + 4096];
        c.send_req(0, CMD_WRITE, 2, 0, big.len() as u32, &big).await;
        assert_eq!(c.read_status().await, (2, EOVERFLOW));
        // Out of range read / write (payload consumed) / offset overflow.
        assert_eq!(c.sread(0, 3, 4 * MIB - 100, 200).await, Err(EINVAL));
        c.send_req(0, CMD_WRITE, 4, 4 * MIB - 100, 200, &[9u8; 200])
            .await;
        assert_eq!(c.read_status().await, (4, ENOSPC));
        c.send_req(0, CMD_WRITE_ZEROES, 5, u64::MAX - 10, 100, &[])
            .await;
        assert_eq!(c.read_status().await, (5, ENOSPC));
        c.send_req(0, CMD_TRIM, 6, 4 * MIB, 1, &[]).await;
        assert_eq!(c.read_status().await, (6, EINVAL));
        // Unknown command, unknown flag, flag not valid for command.
        c.send_req(0, 42, 7, 0, 0, &[]).await;
        assert_eq!(c.read_status().await, (7, EINVAL));
        c.send_req(1 << 9, CMD_FLUSH, 8, 0, 0, &[]).await;
        assert_eq!(c.read_status().await, (8, EINVAL));
        c.send_req(CMD_FLAG_REQ_ONE, CMD_READ, 9, 0, 512, &[]).await;
        assert_eq!(c.chunks(9).await[0].1, REPLY_TYPE_ERROR);
        c.send_req(CMD_FLAG_DF, CMD_WRITE, 10, 0, 4, b"abcd").await;
        assert_eq!(c.read_status().await, (10, EINVAL));
        // BLOCK_STATUS without negotiated contexts.
        assert_eq!(c.block_status(0, 11, 0, 512).await, Err(EINVAL));
        // Nothing above touched the data.
        assert!(mem.snapshot().iter().all(|b| *b == 0));
        // Session still works.
        c.send_req(0, CMD_WRITE, 12, 0, 4, b"abcd").await;
        assert_eq!(c.read_status().await, (12, 0));
        assert_eq!(&c.sread(0, 13, 0, 4).await.unwrap().0, b"abcd");

        // BLOCK_STATUS with contexts: zero length / beyond end are EINVAL.
        let (mut c, _) = Client::negotiate(srv.addr, "disk", true, &["base:allocation"]).await;
        assert_eq!(c.block_status(0, 1, 0, 0).await, Err(EINVAL));
        assert_eq!(c.block_status(0, 2, 4 * MIB - 512, 1024).await, Err(EINVAL));
        assert_eq!(
            c.block_status(0, 3, 0, 1024).await.unwrap()[0].1,
            vec![(512, 0), (512, 3)]
        );
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_export_refuses_writes() {
    let (srv, _mem) = TestServer::with_mem(MIB).await;
    timed(async {
        let (mut c, gi) = Client::negotiate(srv.addr, "ro", true, &[]).await;
        assert!(gi.flags & TF_READ_ONLY != 0);
        c.send_req(0, CMD_WRITE, 1, 0, 5, b"HELLO").await;
        assert_eq!(c.read_status().await, (1, EPERM));
        c.send_req(0, CMD_TRIM, 2, 0, 512, &[]).await;
        assert_eq!(c.read_status().await, (2, EPERM));
        c.send_req(0, CMD_WRITE_ZEROES, 3, 0, 512, &[]).await;
        assert_eq!(c.read_status().await, (3, EPERM));
        assert_eq!(&c.sread(0, 4, 0, 5).await.unwrap().0, b"hello");
        c.send_req(0, CMD_FLUSH, 5, 0, 0, &[]).await;
        assert_eq!(c.read_status().await, (5, 0));
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_only_that_connection() {
    let (srv, mem) = TestServer::with_mem(MIB).await;
    timed(async {
        // A healthy session stays open throughout.
        let (mut keep, _) = Client::negotiate(srv.addr, "disk", true, &[]).await;

        // Bad request magic.
        let (mut c, _) = Client::negotiate(srv.addr, "disk", true, &[]).await;
        c.s.write_all(&[0xde, 0xad, 0xbe, 0xef]).await.unwrap();
        c.s.write_all(&[0u8; 24]).await.unwrap();
        c.expect_closed().await;

        // Garbage instead of IHAVEOPT during the handshake.
        let mut c = Client::connect_hello(srv.addr).await;
        c.s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        c.expect_closed().await;

        // Garbage before even sending client flags (unknown flag bits).
        let mut c = Client::connect(srv.addr).await;
        c.hello(0xffff_ffff).await;
        c.expect_closed().await;

        // Huge option length.
        let mut c = Client::connect_hello(srv.addr).await;
        c.s.write_all(&IHAVEOPT.to_be_bytes()).await.unwrap();
        c.s.write_all(&OPT_GO.to_be_bytes()).await.unwrap();
        c.s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        c.expect_closed().await;

        // Client vanishes mid-handshake and mid-option.
        let c = Client::connect(srv.addr).await;
        drop(c);
        let mut c = Client::connect_hello(srv.addr).await;
        c.s.write_all(&IHAVEOPT.to_be_bytes()).await.unwrap();
        drop(c);

        // Client disconnects in the middle of a write payload: nothing applied.
        let (mut c, _) = Client::negotiate(srv.addr, "disk", true, &[]).await;
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        hdr.extend_from_slice(&0u16.to_be_bytes());
        hdr.extend_from_slice(&CMD_WRITE.to_be_bytes());
        hdr.extend_from_slice(&1u64.to_be_bytes());
        hdr.extend_from_slice(&4096u64.to_be_bytes());
        hdr.extend_from_slice(&65536u32.to_be_bytes());
        hdr.extend_from_slice(&[0x55u8; 1000]);
        c.s.write_all(&hdr).await.unwrap();
        c.s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            mem.snapshot().iter().all(|b| *b == 0),
            "partial write must not be applied"
        );

        // Oversized write beyond the discard limit: hard disconnect.
        let (mut c, _) = Client::negotiate(srv.addr, "disk", true, &[]).await;
        c.send_req(0, CMD_WRITE, 1, 0, u32::MAX, &[]).await;
        c.expect_closed().await;

        // The long-lived session and new sessions still work.
        keep.send_req(0, CMD_WRITE, 1, 0, 3, b"xyz").await;
        assert_eq!(keep.read_status().await, (1, 0));
        let (mut c, _) = Client::negotiate(srv.addr, "disk", false, &[]).await;
        assert_eq!(c.simple_read(1, 0, 3).await.unwrap(), b"xyz");
        assert!(srv.config.metrics.handshake_failures() >= 5);
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_errors() {
    let (srv, _mem) = TestServer::with_mem(MIB).await;
    timed(async {
        let mut c = Client::connect_hello(srv.addr).await;
        assert_eq!(c.opt_final(99, b"whatever").await, REP_ERR_UNSUP);
        assert_eq!(c.opt_final(OPT_EXTENDED_HEADERS, &[]).await, REP_ERR_UNSUP);
        assert_eq!(c.opt_final(OPT_STARTTLS, &[]).await, REP_ERR_POLICY);
        assert_eq!(c.opt_final(OPT_LIST, b"x").await, REP_ERR_INVALID);
        assert_eq!(
            c.opt_final(OPT_STRUCTURED_REPLY, b"x").await,
            REP_ERR_INVALID
        );
        // Meta contexts need structured replies first.
        let d = Client::meta_data("disk", &["base:allocation"]);
        assert_eq!(c.opt_final(OPT_SET_META_CONTEXT, &d).await, REP_ERR_INVALID);
        assert_eq!(
            c.info_or_go(OPT_GO, "missing", &[]).await.err(),
            Some(REP_ERR_UNKNOWN)
        );
        // Truncated / inconsistent GO payloads.
        assert_eq!(
            c.opt_final(OPT_GO, &[0, 0, 0, 9, b'd']).await,
            REP_ERR_INVALID
        );
        let mut bad = Client::info_data("disk", &[INFO_NAME]);
        bad.pop();
        assert_eq!(c.opt_final(OPT_GO, &bad).await, REP_ERR_INVALID);
        c.structured().await;
        assert_eq!(
            c.opt_final(OPT_LIST_META_CONTEXT, &[0, 0, 0, 4, b'd'])
                .await,
            REP_ERR_INVALID
        );
        let d = Client::meta_data("missing", &["base:allocation"]);
        assert_eq!(
            c.opt_final(OPT_LIST_META_CONTEXT, &d).await,
            REP_ERR_UNKNOWN
        );
        // Contexts selected for another export are dropped at GO.
        let (fin, ids) = c
            .meta(OPT_SET_META_CONTEXT, "ro", &["base:allocation"])
            .await;
        assert_eq!((fin, ids.len()), (REP_ACK, 1));
        // Still negotiating after all of that.
        let gi = c.info_or_go(OPT_GO, "disk", &[]).await.unwrap();
        assert_eq!(gi.size, MIB);
        assert!(gi.flags & TF_SEND_DF != 0);
        assert_eq!(c.block_status(0, 1, 0, 512).await, Err(EINVAL));

        // ABORT gets an ACK and the connection is closed.
        let mut c = Client::connect_hello(srv.addr).await;
        assert_eq!(c.opt_final(OPT_ABORT, &[]).await, REP_ACK);
        c.expect_closed().await;
    })
    .await;
    srv.shutdown().await;
}

/// "TLS" acceptor that just hands the stream back: exercises the upgrade slot.
struct PassthroughTls;
impl TlsAcceptor for PassthroughTls {
    fn accept(&self, stream: BoxStream) -> BoxFuture<'static, std::io::Result<BoxStream>> {
        Box::pin(async move { Ok(stream) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_policy() {
    let reg = Arc::new(StaticRegistry::new());
    reg.insert("disk", Arc::new(MemExport::new(MIB)));
    timed(async {
        // Required, no acceptor: everything but STARTTLS/ABORT is TLS_REQD.
        let cfg = ServerConfig {
            tls: Some(TlsConfig {
                required: true,
                acceptor: None,
            }),
            ..ServerConfig::default()
        };
        let srv = TestServer::start(reg.clone(), cfg).await;
        let mut c = Client::connect_hello(srv.addr).await;
        assert_eq!(c.opt_final(OPT_LIST, &[]).await, REP_ERR_TLS_REQD);
        assert_eq!(
            c.info_or_go(OPT_GO, "disk", &[]).await.err(),
            Some(REP_ERR_TLS_REQD)
        );
        assert_eq!(c.opt_final(OPT_STARTTLS, &[]).await, REP_ERR_POLICY);
        c.send_opt(OPT_EXPORT_NAME, b"disk").await;
        c.expect_closed().await;
        srv.shutdown().await;

        // Required with an acceptor: STARTTLS → ACK, upgrade, state reset.
        let cfg = ServerConfig {
            tls: Some(TlsConfig {
                required: true,
                acceptor: Some(Arc::new(PassthroughTls)),
            }),
            ..ServerConfig::default()
        };
        let srv = TestServer::start(reg.clone(), cfg).await;
        let mut c = Client::connect_hello(srv.addr).await;
        assert_eq!(c.opt_final(OPT_STARTTLS, &[]).await, REP_ACK);
        assert_eq!(c.opt_final(OPT_STARTTLS, &[]).await, REP_ERR_INVALID);
        let gi = c.info_or_go(OPT_GO, "disk", &[]).await.unwrap();
        assert_eq!(gi.flags & TF_SEND_DF, 0);
        c.send_req(0, CMD_WRITE, 1, 0, 2, b"ok").await;
        assert_eq!(c.read_status().await, (1, 0));
        srv.shutdown().await;
    })
    .await;
}

/// MemExport wrapper with artificial latency and an extra dynamic context family.
struct SlowExport {
    inner: MemExport,
    slow_read_off: u64,
    delay: Duration,
}

impl ExportBackend for SlowExport {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, off: u64, len: u32) -> BoxFuture<'_, ExportResult<Bytes>> {
        Box::pin(async move {
            if off == self.slow_read_off {
                tokio::time::sleep(self.delay).await;
            }
            self.inner.read(off, len).await
        })
    }
    fn write(&self, off: u64, data: Bytes, fua: bool) -> BoxFuture<'_, ExportResult<()>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.write(off, data, fua).await
        })
    }
    fn flush(&self) -> BoxFuture<'_, ExportResult<()>> {
        self.inner.flush()
    }
    fn trim(&self, off: u64, len: u32, fua: bool) -> BoxFuture<'_, ExportResult<()>> {
        self.inner.trim(off, len, fua)
    }
    fn write_zeroes(&self, off: u64, len: u32, f: ZeroFlags) -> BoxFuture<'_, ExportResult<()>> {
        self.inner.write_zeroes(off, len, f)
    }
    fn block_status(
        &self,
        context: &str,
        off: u64,
        len: u32,
    ) -> BoxFuture<'_, ExportResult<Vec<Extent>>> {
        if let Some(snap) = context.strip_prefix("rbd-row:diff:") {
            let flags = if snap == "s1" { 1 } else { 0 };
            return Box::pin(async move {
                Ok(vec![
                    Extent::new(len / 2, flags),
                    Extent::new(len - len / 2, 0),
                ])
            });
        }
        self.inner.block_status(context, off, len)
    }
    fn meta_contexts(&self, query: &str) -> Vec<String> {
        let mut v = self.inner.meta_contexts(query);
        let diff = ["rbd-row:diff:s1", "rbd-row:diff:s2"];
        if query.is_empty() || query == "rbd-row:" || query == "rbd-row:diff:" {
            v.extend(diff.iter().map(|s| s.to_string()));
        } else if diff.contains(&query) {
            v.push(query.to_owned());
        }
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_replies_disc_drain_and_custom_contexts() {
    let reg = Arc::new(StaticRegistry::new());
    let mut init = vec![0u8; MIB as usize];
    init[..4096].fill(1); // data, so the slow read really goes to the backend
    let slow = Arc::new(SlowExport {
        inner: MemExport::from_vec(init),
        slow_read_off: 0,
        delay: Duration::from_millis(300),
    });
    reg.insert("slow", slow.clone() as Arc<dyn ExportBackend>);
    let srv = TestServer::start(reg, ServerConfig::default()).await;
    timed(async {
        let mut c = Client::connect_hello(srv.addr).await;
        c.structured().await;
        let (_, listed) = c
            .meta(OPT_LIST_META_CONTEXT, "slow", &["rbd-row:diff:"])
            .await;
        assert_eq!(listed.len(), 2);
        let (_, set) = c
            .meta(
                OPT_SET_META_CONTEXT,
                "slow",
                &["base:allocation", "rbd-row:diff:s1", "rbd-row:diff:nope"],
            )
            .await;
        assert_eq!(
            set.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(),
            vec!["base:allocation", "rbd-row:diff:s1"]
        );
        c.info_or_go(OPT_GO, "slow", &[]).await.unwrap();

        // Two contexts → two chunks, DONE only on the last.
        c.send_req(0, CMD_BLOCK_STATUS, 1, 0, 8192, &[]).await;
        let chunks = c.chunks(1).await;
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].0 & REPLY_FLAG_DONE, 0);
        assert_eq!(chunks[1].0 & REPLY_FLAG_DONE, REPLY_FLAG_DONE);
        let diff = chunks
            .iter()
            .find(|c| c.2[..4] == set[1].0.to_be_bytes())
            .unwrap();
        assert_eq!(
            diff.2[4..],
            [0, 0, 16, 0, 0, 0, 0, 1, 0, 0, 16, 0, 0, 0, 0, 0]
        );

        // Slow read at 0 then fast read elsewhere: the fast one is answered first.
        c.send_req(0, CMD_READ, 10, 0, 4096, &[]).await;
        c.send_req(CMD_FLAG_DF, CMD_READ, 11, 65536, 4096, &[])
            .await;
        let first = match c.read_reply().await {
            Reply::Chunk { handle, .. } => handle,
            r => panic!("{r:?}"),
        };
        let second = match c.read_reply().await {
            Reply::Chunk { handle, .. } => handle,
            r => panic!("{r:?}"),
        };
        assert_eq!((first, second), (11, 10));

        // DISC right after a slow write: the write completes and is answered, then close.
        c.send_req(0, CMD_WRITE, 20, 4096, 4, b"last").await;
        c.send_req(0, CMD_DISC, 21, 0, 0, &[]).await;
        assert_eq!(c.read_status().await, (20, 0));
        c.expect_closed().await;
        assert_eq!(&slow.inner.snapshot()[4096..4100], b"last");
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_connections() {
    let reg = Arc::new(StaticRegistry::new());
    let slow = Arc::new(SlowExport {
        inner: MemExport::new(MIB),
        slow_read_off: u64::MAX,
        delay: Duration::from_millis(300),
    });
    reg.insert("slow", slow.clone() as Arc<dyn ExportBackend>);
    let srv = TestServer::start(reg, ServerConfig::default()).await;
    timed(async {
        let (mut c, _) = Client::negotiate(srv.addr, "slow", true, &[]).await;
        let mut idle = Client::connect_hello(srv.addr).await;
        c.send_req(0, CMD_WRITE, 1, 0, 4, b"data").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let addr = srv.addr;
        srv.shutdown().await;
        // In-flight write was answered before the close.
        assert_eq!(c.read_status().await, (1, 0));
        c.expect_closed().await;
        idle.expect_closed().await;
        assert_eq!(&slow.inner.snapshot()[..4], b"data");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    })
    .await;
}

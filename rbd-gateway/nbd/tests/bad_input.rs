//! Bad NBD input not covered by raw.rs (issue 10, docs/BAD-INPUT.md): zero
//! and unaligned lengths, requests sent after NBD_CMD_DISC, option data just
//! past the limit and over-long names, and requests whose structured reply
//! would be huge. Every case checks the export's content afterwards.

mod common;

use common::{timed, Client, TestServer};
use row_nbd::proto::*;
use tokio::io::AsyncWriteExt;

const EINVAL: u32 = 22;
const EOVERFLOW: u32 = 75;
const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_requests_are_no_ops() {
    let (srv, mem) = TestServer::with_mem(MIB).await;
    timed(async {
        for structured in [false, true] {
            let (mut c, _) = Client::negotiate(srv.addr, "disk", structured, &[]).await;
            c.send_req(0, CMD_WRITE, 1, 0, 8, b"contents").await;
            assert_eq!(c.read_status().await, (1, 0));
            let before = mem.snapshot();
            // Zero-length commands, also at the very end of the export.
            for (h, typ) in [
                (2, CMD_WRITE),
                (3, CMD_TRIM),
                (4, CMD_WRITE_ZEROES),
                (5, CMD_CACHE),
                (6, CMD_FLUSH),
            ] {
                for off in [0, MIB] {
                    c.send_req(0, typ, h, off, 0, &[]).await;
                    assert_eq!(c.read_status().await, (h, 0), "cmd {typ} at {off}");
                }
            }
            // Zero-length read: success with no data.
            if structured {
                assert_eq!(c.sread(0, 7, MIB, 0).await.map(|r| r.0), Ok(vec![]));
            } else {
                assert_eq!(c.simple_read(7, MIB, 0).await, Ok(vec![]));
            }
            // Zero length past the end is still out of range.
            c.send_req(0, CMD_TRIM, 8, MIB + 1, 0, &[]).await;
            assert_eq!(c.read_status().await, (8, EINVAL));
            assert!(
                mem.snapshot() == before,
                "a zero-length request changed data"
            );
            // The session is still in sync.
            if structured {
                assert_eq!(&c.sread(0, 9, 0, 8).await.unwrap().0, b"contents");
            } else {
                assert_eq!(c.simple_read(9, 0, 8).await.unwrap(), b"contents");
            }
        }
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaligned_requests_touch_exactly_their_bytes() {
    let (srv, mem) = TestServer::with_mem(MIB).await;
    timed(async {
        let (mut c, _) = Client::negotiate(srv.addr, "disk", true, &[]).await;
        let mut expect = vec![0u8; MIB as usize];
        c.send_req(0, CMD_WRITE, 1, 4093, 7, b"1234567").await;
        assert_eq!(c.read_status().await, (1, 0));
        expect[4093..4100].copy_from_slice(b"1234567");
        c.send_req(0, CMD_WRITE, 2, MIB - 3, 3, b"end").await;
        assert_eq!(c.read_status().await, (2, 0));
        expect[MIB as usize - 3..].copy_from_slice(b"end");
        c.send_req(0, CMD_WRITE_ZEROES, 3, 4095, 2, &[]).await;
        assert_eq!(c.read_status().await, (3, 0));
        expect[4095..4097].fill(0);
        c.send_req(0, CMD_TRIM, 4, 4099, 1, &[]).await;
        assert_eq!(c.read_status().await, (4, 0));
        // TRIM may or may not zero; the MemExport zeroes exactly.
        expect[4099] = 0;
        assert!(mem.snapshot() == expect, "unaligned writes spilled");
        assert_eq!(
            c.sread(0, 5, 4090, 13).await.unwrap().0,
            &expect[4090..4103]
        );
        // One byte past the end, unaligned.
        c.send_req(0, CMD_WRITE, 6, MIB - 1, 2, b"xy").await;
        assert_eq!(c.read_status().await.0, 6);
        assert!(mem.snapshot() == expect, "a refused write changed data");
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_after_disc_are_not_executed() {
    let (srv, mem) = TestServer::with_mem(MIB).await;
    timed(async {
        let (mut c, _) = Client::negotiate(srv.addr, "disk", true, &[]).await;
        c.send_req(0, CMD_WRITE, 1, 0, 4, b"kept").await;
        assert_eq!(c.read_status().await, (1, 0));
        // DISC followed, in the same segment, by a write, a trim and garbage.
        let mut b = Vec::new();
        for (typ, handle, off, len, payload) in [
            (CMD_DISC, 2u64, 0u64, 0u32, &b""[..]),
            (CMD_WRITE, 3, 0, 4, &b"LOST"[..]),
            (CMD_TRIM, 4, 0, 4, &b""[..]),
        ] {
            b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
            b.extend_from_slice(&typ.to_be_bytes());
            b.extend_from_slice(&handle.to_be_bytes());
            b.extend_from_slice(&off.to_be_bytes());
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(payload);
        }
        b.extend_from_slice(b"garbage after the disconnect");
        c.s.write_all(&b).await.unwrap();
        // No reply to anything after DISC; the server closes.
        c.expect_closed().await;
        assert_eq!(&mem.snapshot()[..4], b"kept");
        // The export still serves new connections.
        let (mut c, _) = Client::negotiate(srv.addr, "disk", false, &[]).await;
        assert_eq!(c.simple_read(1, 0, 4).await.unwrap(), b"kept");
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_data_limits() {
    let (srv, _mem) = TestServer::with_mem(MIB).await;
    timed(async {
        // 1 MiB + 1 of option data: closed before the data is read.
        let mut c = Client::connect_hello(srv.addr).await;
        c.s.write_all(&IHAVEOPT.to_be_bytes()).await.unwrap();
        c.s.write_all(&OPT_GO.to_be_bytes()).await.unwrap();
        c.s.write_all(&((1u32 << 20) + 1).to_be_bytes())
            .await
            .unwrap();
        c.expect_closed().await;
        // Exactly 1 MiB of option data (a 4097-byte name and padding) is read
        // and refused as invalid; negotiation goes on.
        let mut c = Client::connect_hello(srv.addr).await;
        let long = "n".repeat(4097);
        let mut d = Client::info_data(&long, &[]);
        assert_eq!(c.opt_final(OPT_GO, &d).await, REP_ERR_INVALID);
        d.resize(1 << 20, 0);
        assert_eq!(c.opt_final(OPT_INFO, &d).await, REP_ERR_INVALID);
        // A name with NUL or invalid UTF-8.
        assert_eq!(
            c.opt_final(OPT_GO, &Client::info_data("di\0sk", &[])).await,
            REP_ERR_INVALID
        );
        let mut bad = Client::info_data("disk", &[]);
        bad[5] = 0xff;
        assert_ne!(c.opt_final(OPT_GO, &bad).await, REP_ACK);
        // Unknown info request codes are ignored, as the protocol says.
        let gi = c.info_or_go(OPT_GO, "disk", &[0x7777]).await.unwrap();
        assert_eq!(gi.size, MIB);
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_structured_replies_stay_bounded() {
    let size = 64 * MIB;
    let (srv, mem) = TestServer::with_mem(size).await;
    timed(async {
        let (mut c, _) = Client::negotiate(srv.addr, "disk", true, &["base:allocation"]).await;
        // Every other 4 KiB block holds data: the worst case for extents.
        let mut h = 100;
        let block = vec![0x5au8; 4096];
        for off in (0..size).step_by(8192) {
            c.send_req(0, CMD_WRITE, h, off, 4096, &block).await;
            h += 1;
        }
        for _ in 100..h {
            assert_eq!(c.read_status().await.1, 0);
        }
        let before = mem.snapshot();
        // Whole-export block status: the reply covers at most the request
        // and every extent is non-empty.
        let r = c.block_status(0, 1, 0, size as u32).await.unwrap();
        let ext = &r[0].1;
        let total: u64 = ext.iter().map(|e| u64::from(e.0)).sum();
        assert!(total > 0 && total <= size, "{total}");
        assert!(ext.iter().all(|e| e.0 > 0));
        // REQ_ONE: exactly one extent.
        let r = c
            .block_status(CMD_FLAG_REQ_ONE, 2, 0, size as u32)
            .await
            .unwrap();
        assert_eq!(r[0].1.len(), 1);
        // Block status longer than the export, or with u32::MAX length.
        assert_eq!(c.block_status(0, 3, 0, u32::MAX).await, Err(EINVAL));
        assert_eq!(c.block_status(0, 4, size - 1, 2).await, Err(EINVAL));
        // The largest read the server allows, fragmented into 8192 pieces.
        let max = 32 << 20;
        let (data, holes, datas) = c.sread(0, 5, 0, max).await.unwrap();
        assert_eq!(data, &before[..max as usize]);
        assert!(holes + datas >= 2);
        // One byte more is refused without reading anything.
        assert_eq!(c.sread(0, 6, 0, max + 1).await, Err(EOVERFLOW));
        assert!(mem.snapshot() == before);
    })
    .await;
    srv.shutdown().await;
}

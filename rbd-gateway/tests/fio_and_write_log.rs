//! Real load through the gateway: fio's nbd engine with verification over
//! several connections, and a snapshot taken while a pipelined client writes,
//! judged by a write log: every write acknowledged before the snapshot was
//! requested is in it, nothing issued after the snapshot completed is, and
//! every other block holds either its old or its new contents — never
//! anything else.

mod common;

use common::*;
use rbd_gateway::ExportSelection;
use row_nbd::proto::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[test]
fn fio_random_writes_verify_over_two_connections() {
    let tg = start(&[("img", 64 * MIB)], ExportSelection::All, false);
    let uri = tg.url("img");
    let out = run_ok(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--numjobs=2",
            "--size=16M",
            "--offset_increment=32M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--group_reporting",
            "--verify_state_save=0",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("err= 0"), "fio reported errors:\n{text}");
    // The blocks fio verified are also what the engine reads directly.
    let img = tg.image("img");
    let head = tg.rt.block_on(img.read(0, 4096)).expect("read");
    assert!(
        head.iter().any(|b| *b != 0),
        "fio's first block is not in the image"
    );
    tg.shutdown();
}

/// A tiny pipelined NBD client: handshake, then WRITE requests with
/// out-of-order replies.
struct Client {
    stream: TcpStream,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, export: &str) -> Client {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut b8 = [0u8; 8];
        s.read_exact(&mut b8).await.expect("magic");
        assert_eq!(u64::from_be_bytes(b8), NBDMAGIC);
        s.read_exact(&mut b8).await.expect("ihaveopt");
        let mut b2 = [0u8; 2];
        s.read_exact(&mut b2).await.expect("flags");
        s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .await
            .expect("client flags");
        let mut opt = Vec::new();
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        let mut msg = Vec::new();
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&OPT_GO.to_be_bytes());
        msg.extend_from_slice(&(opt.len() as u32).to_be_bytes());
        msg.extend_from_slice(&opt);
        s.write_all(&msg).await.expect("GO");
        loop {
            let mut hdr = [0u8; 20];
            s.read_exact(&mut hdr).await.expect("option reply");
            let typ = u32::from_be_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
            let len = u32::from_be_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]) as usize;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.expect("payload");
            assert!(typ & (1 << 31) == 0, "GO refused {typ:#x}");
            if typ == REP_ACK {
                break;
            }
        }
        Client { stream: s }
    }
}

fn block_data(block: u64, version: u32) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    for (i, chunk) in v.chunks_mut(16).enumerate() {
        chunk[..8].copy_from_slice(&block.to_le_bytes());
        chunk[8..12].copy_from_slice(&version.to_le_bytes());
        chunk[12..16].copy_from_slice(&(i as u32).to_le_bytes());
    }
    v
}

#[derive(Default, Clone)]
struct BlockLog {
    /// Version acknowledged last before the snapshot was requested.
    acked_before: u32,
    /// Versions issued up to the moment the snapshot completed.
    issued_until_done: Vec<u32>,
}

#[test]
fn snapshot_while_writing_holds_exactly_the_acknowledged_writes() {
    const BLOCKS: u64 = 512;
    let tg = start(&[("img", 4 * MIB)], ExportSelection::All, false);
    let img = tg.image("img");
    let addr = tg.addr;
    let log: Arc<Mutex<HashMap<u64, BlockLog>>> = Arc::default();
    let phase = Arc::new(Mutex::new(0u8)); // 0 before, 1 snapshot running, 2 after
    let result = tg.rt.block_on(async {
        let client = Client::connect(addr, "img").await;
        let (mut rd, mut wr) = client.stream.into_split();
        let inflight: Arc<Mutex<HashMap<u64, (u64, u32)>>> = Arc::default();
        let (log2, inflight2, phase2) = (log.clone(), inflight.clone(), phase.clone());
        let reader = tokio::spawn(async move {
            let mut acked = 0u64;
            loop {
                let mut hdr = [0u8; 16];
                if rd.read_exact(&mut hdr).await.is_err() {
                    return acked;
                }
                assert_eq!(
                    u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]),
                    SIMPLE_REPLY_MAGIC
                );
                let errno = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                assert_eq!(errno, 0, "write failed");
                let handle = u64::from_be_bytes(hdr[8..16].try_into().expect("8 bytes"));
                let (block, version) = inflight2
                    .lock()
                    .expect("lock")
                    .remove(&handle)
                    .expect("known handle");
                if *phase2.lock().expect("lock") == 0 {
                    let mut l = log2.lock().expect("lock");
                    let e = l.entry(block).or_default();
                    e.acked_before = e.acked_before.max(version);
                }
                acked += 1;
            }
        });
        let mut versions = vec![0u32; BLOCKS as usize];
        let mut handle = 0u64;
        let mut snapshot = None;
        for i in 0..6000u64 {
            let block = (i * 7919) % BLOCKS;
            versions[block as usize] += 1;
            let version = versions[block as usize];
            handle += 1;
            inflight
                .lock()
                .expect("lock")
                .insert(handle, (block, version));
            if *phase.lock().expect("lock") < 2 {
                log.lock()
                    .expect("lock")
                    .entry(block)
                    .or_default()
                    .issued_until_done
                    .push(version);
            }
            let mut req = Vec::with_capacity(28 + 4096);
            req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            req.extend_from_slice(&0u16.to_be_bytes());
            req.extend_from_slice(&CMD_WRITE.to_be_bytes());
            req.extend_from_slice(&handle.to_be_bytes());
            req.extend_from_slice(&(block * 4096).to_be_bytes());
            req.extend_from_slice(&4096u32.to_be_bytes());
            req.extend_from_slice(&block_data(block, version));
            wr.write_all(&req).await.expect("send");
            while inflight.lock().expect("lock").len() > 32 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            if i == 3000 {
                *phase.lock().expect("lock") = 1;
                let img = img.clone();
                let phase = phase.clone();
                snapshot = Some(tokio::spawn(async move {
                    let r = img.snap_create("mid").await;
                    *phase.lock().expect("lock") = 2;
                    r
                }));
            }
        }
        snapshot
            .expect("started")
            .await
            .expect("join")
            .expect("snapshot");
        while !inflight.lock().expect("lock").is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(wr);
        reader.abort();
        versions
    });
    let snap = tg.rt.block_on(async {
        let store = pool_store(&tg.stores, "rbd").await;
        let s = store
            .open_snapshot("img", "mid")
            .await
            .expect("open snapshot");
        s.read(0, BLOCKS * 4096).await.expect("read snapshot")
    });
    let log = log.lock().expect("lock").clone();
    let mut exact = 0;
    for block in 0..BLOCKS {
        let got = &snap[(block * 4096) as usize..((block + 1) * 4096) as usize];
        let entry = log.get(&block).cloned().unwrap_or_default();
        let got_version = if got.iter().all(|b| *b == 0) {
            0
        } else {
            let v = u32::from_le_bytes(got[8..12].try_into().expect("4 bytes"));
            assert_eq!(
                got,
                block_data(block, v).as_slice(),
                "block {block} holds foreign or torn data"
            );
            v
        };
        assert!(
            got_version >= entry.acked_before,
            "block {block}: snapshot has version {got_version}, but {} was acknowledged before it",
            entry.acked_before
        );
        assert!(
            got_version == 0 || entry.issued_until_done.contains(&got_version),
            "block {block}: version {got_version} was written after the snapshot completed"
        );
        if got_version == entry.acked_before {
            exact += 1;
        }
    }
    assert!(
        exact > BLOCKS / 2,
        "most blocks should match the acknowledged state exactly"
    );
    // The head has the final version of every block.
    let head = tg
        .rt
        .block_on(img.read(0, BLOCKS * 4096))
        .expect("read head");
    for block in 0..BLOCKS {
        let got = &head[(block * 4096) as usize..((block + 1) * 4096) as usize];
        assert_eq!(
            got,
            block_data(block, result[block as usize]).as_slice(),
            "head block {block}"
        );
    }
    tg.shutdown();
}

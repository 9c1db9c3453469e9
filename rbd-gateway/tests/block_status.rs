//! Block status over raw NBD sockets against an in-process gateway: the diff
//! contexts (`rbd-row:diff:<snap>`, `qemu:dirty-bitmap:<snap>`) and
//! `base:allocation` follow writes, trims and zeroes made after a first
//! query, on the same connection and on another one.

mod common;

#[path = "../nbd/tests/common/mod.rs"]
mod nbd_client;

use common::*;
use nbd_client::Client;
use rbd_gateway::{ExportSelection, DIRTY};
use row_nbd::proto::*;

const SIZE: u64 = 16 * MIB;
const DIFF: &str = "rbd-row:diff:s1";
const QEMU: &str = "qemu:dirty-bitmap:s1";

/// Block status of `[off, off + len)` as (context name → merged (len, flags)).
async fn status(
    c: &mut Client,
    ids: &[(u32, String)],
    handle: u64,
    off: u64,
    len: u32,
) -> Vec<(String, Vec<(u32, u32)>)> {
    let got = c
        .block_status(0, handle, off, len)
        .await
        .expect("block status");
    let mut out: Vec<(String, Vec<(u32, u32)>)> = got
        .into_iter()
        .map(|(id, ext)| {
            let name = ids
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, n)| n.clone())
                .expect("known context id");
            (name, ext)
        })
        .collect();
    out.sort();
    out
}

fn of<'a>(st: &'a [(String, Vec<(u32, u32)>)], name: &str) -> &'a [(u32, u32)] {
    &st.iter().find(|(n, _)| n == name).expect("context").1
}

async fn write(c: &mut Client, handle: u64, off: u64, data: &[u8]) {
    c.send_req(0, CMD_WRITE, handle, off, data.len() as u32, data)
        .await;
    assert_eq!(c.read_status().await, (handle, 0));
}

#[test]
fn diff_and_allocation_follow_writes_after_the_first_query() {
    let tg = start(
        &[("img", SIZE)],
        ExportSelection::Only(vec!["img".into()]),
        false,
    );
    let img = tg.image("img");
    tg.rt.block_on(async {
        img.write(0, bytes::Bytes::from(vec![1u8; 8192]))
            .await
            .expect("write");
        img.snap_create("s1").await.expect("snap");
    });
    tg.rt.block_on(async {
        let (mut c, gi) =
            Client::negotiate(tg.addr, "img", true, &[DIFF, QEMU, BASE_ALLOCATION]).await;
        assert_eq!(gi.contexts.len(), 3);
        let ids = gi.contexts.clone();
        let len = SIZE as u32;

        // First query: nothing changed since s1; grains 0-1 hold data.
        let st = status(&mut c, &ids, 1, 0, len).await;
        assert_eq!(of(&st, DIFF), &[(len, 0)]);
        assert_eq!(of(&st, QEMU), &[(len, 0)]);
        assert_eq!(of(&st, BASE_ALLOCATION), &[(8192, 0), (len - 8192, 3)]);

        // Write 4 KiB at 1 MiB through this connection: dirty and allocated.
        write(&mut c, 2, MIB, &[7u8; 4096]).await;
        let st = status(&mut c, &ids, 3, 0, len).await;
        let m = MIB as u32;
        assert_eq!(
            of(&st, DIFF),
            &[(m, 0), (4096, DIRTY), (len - m - 4096, 0)],
            "a write after the first query must show in the diff context"
        );
        assert_eq!(of(&st, QEMU), of(&st, DIFF));
        assert_eq!(
            of(&st, BASE_ALLOCATION),
            &[(8192, 0), (m - 8192, 3), (4096, 0), (len - m - 4096, 3)]
        );

        // Trim grain 0 and write-zeroes grain 1: changed, and holes now.
        c.send_req(0, CMD_TRIM, 4, 0, 4096, &[]).await;
        assert_eq!(c.read_status().await, (4, 0));
        c.send_req(0, CMD_WRITE_ZEROES, 5, 4096, 4096, &[]).await;
        assert_eq!(c.read_status().await, (5, 0));
        let st = status(&mut c, &ids, 6, 0, 2 * m).await;
        assert_eq!(
            of(&st, DIFF),
            &[(8192, DIRTY), (m - 8192, 0), (4096, DIRTY), (m - 4096, 0)]
        );
        assert_eq!(
            of(&st, BASE_ALLOCATION),
            &[(m, 3), (4096, 0), (m - 4096, 3)]
        );

        // A write through another connection shows on this one too.
        let (mut other, _) = Client::negotiate(tg.addr, "img", true, &[]).await;
        write(&mut other, 1, 5 * MIB, &[9u8; 4096]).await;
        let st = status(&mut c, &ids, 7, 4 * MIB, 2 * m).await;
        assert_eq!(of(&st, DIFF), &[(m, 0), (4096, DIRTY), (m - 4096, 0)]);
        assert_eq!(
            of(&st, BASE_ALLOCATION),
            &[(m, 3), (4096, 0), (m - 4096, 3)]
        );

        // Sparse reads agree: the new data comes back, the trimmed grain is a hole.
        let (data, holes, datas) = c.sread(0, 8, 0, 3 * 4096).await.expect("read");
        assert!(data.iter().all(|b| *b == 0));
        assert_eq!((holes, datas), (1, 0));
        let (data, _, _) = c.sread(0, 9, 5 * MIB, 4096).await.expect("read");
        assert!(data.iter().all(|b| *b == 9));

        // Out-of-range status is an error reply, the session goes on.
        c.send_req(0, CMD_BLOCK_STATUS, 10, SIZE, 4096, &[]).await;
        let (h, err) = c.read_status().await;
        assert_eq!((h, err), (10, 22));
        let st = status(&mut c, &ids, 11, SIZE - 4096, 4096).await;
        assert_eq!(of(&st, DIFF), &[(4096, 0)]);
        for cl in [&mut c, &mut other] {
            cl.send_req(0, CMD_DISC, 99, 0, 0, &[]).await;
        }
    });
    drop(img);
    tg.shutdown();
}

/// With a fresh (uncached) head, a query in the middle of a thin 1 TiB
/// image answers exactly its window.
#[test]
fn allocation_on_a_thin_tib_image() {
    const TIB: u64 = 1 << 40;
    let tg = start(
        &[("big", TIB)],
        ExportSelection::Only(vec!["big".into()]),
        false,
    );
    tg.rt.block_on(async {
        let (mut c, gi) = Client::negotiate(tg.addr, "big", true, &[BASE_ALLOCATION]).await;
        let ids = gi.contexts.clone();
        for at in [0, 512 << 30, TIB - 4096] {
            write(&mut c, 1, at, &[5u8; 4096]).await;
        }
        let st = status(&mut c, &ids, 2, (512 << 30) - 4096, 3 * 4096).await;
        assert_eq!(of(&st, BASE_ALLOCATION), &[(4096, 3), (4096, 0), (4096, 3)]);
        let st = status(&mut c, &ids, 3, TIB - (1 << 30), 1 << 30).await;
        assert_eq!(
            of(&st, BASE_ALLOCATION),
            &[((1 << 30) - 4096, 3), (4096, 0)]
        );
        let (d, holes, datas) = c.sread(0, 4, TIB - 8192, 8192).await.expect("read");
        assert_eq!((holes, datas), (1, 1));
        assert!(d[4096..].iter().all(|b| *b == 5));
        c.send_req(0, CMD_DISC, 99, 0, 0, &[]).await;
    });
    tg.shutdown();
}

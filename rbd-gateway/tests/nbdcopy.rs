//! nbdcopy with several connections through the gateway and the engine: a
//! sparse disk image is copied in and back out over 4 connections (the
//! export advertises CAN_MULTI_CONN), and both copies are byte-identical.

mod common;

use common::*;
use rbd_gateway::ExportSelection;

#[test]
fn nbdcopy_multi_conn_round_trip() {
    let tg = start(&[("img", 32 * MIB)], ExportSelection::All, true);
    let mut data = vec![0u8; (32 * MIB) as usize];
    for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
        if i % 3 != 1 {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = (i * 131 + j * 7) as u8 | 1;
            }
        }
    }
    let src = tg.path("src.raw");
    let back = tg.path("back.raw");
    write_file(&src, &data);
    let url = tg.url("img");
    let src_s = src.to_str().expect("utf8");
    let back_s = back.to_str().expect("utf8");
    run_ok("nbdcopy", &["--connections=4", "--threads=4", src_s, &url]);
    run_ok("nbdcopy", &["--connections=4", "--threads=4", &url, back_s]);
    let got = std::fs::read(&back).expect("read copy");
    assert!(
        got == data,
        "round trip through the gateway changed the data"
    );
    let img = tg.image("img");
    let direct = tg.rt.block_on(img.read(0, 32 * MIB)).expect("read");
    assert!(direct.as_ref() == data.as_slice(), "engine contents differ");
    // nbdcopy really used several connections.
    let body = scrape(&tg.rt, tg.metrics_addr.expect("metrics"));
    let conns = series(&body, "nbd_export_connections_total{export=\"img\"}").expect("series");
    assert!(conns >= 8.0, "expected 4 connections each way, saw {conns}");
    // The holes nbdcopy skipped are holes in the map too.
    let map = nbd_map(&url, None);
    assert!(
        map.iter().any(|&(_, _, t)| t & 1 == 1),
        "no hole reported: {map:?}"
    );
    tg.shutdown();
}

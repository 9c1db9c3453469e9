//! `/metrics` completeness: NBD per-export series plus the gateway's backend
//! op counters and per-image snapshot / reclaim-backlog / usage gauges,
//! scraped over HTTP after real I/O (qemu-io) and snapshot changes.

mod common;

use common::*;
use rbd_gateway::ExportSelection;

const SIZE: u64 = 4 * MIB;

fn get(body: &str, key: &str) -> f64 {
    series(body, key).unwrap_or_else(|| panic!("no series {key} in:\n{body}"))
}

#[test]
fn metrics_cover_backend_and_images() {
    let gw = start(&[("img", SIZE), ("idle", MIB)], ExportSelection::All, true);
    let maddr = gw.metrics_addr.expect("metrics address");
    let url = gw.url("img");

    // Nothing opened yet: backend series exist, no image series.
    let body = scrape(&gw.rt, maddr);
    assert!(
        body.contains("# TYPE rbd_row_backend_ops_total counter"),
        "{body}"
    );
    assert!(
        series(&body, "rbd_row_image_snapshots{image=\"img\"}").is_none(),
        "{body}"
    );

    // 1 MiB + 64 KiB of data, then a snapshot, then a 64 KiB overwrite.
    run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x11 0 1M",
            "-c",
            "write -P 0x22 2M 64k",
            &url,
        ],
    );
    let img = gw.image("img");
    gw.rt.block_on(img.snap_create("s1")).expect("snap_create");
    run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x33 0 64k",
            "-c",
            "read -P 0x22 2M 64k",
            &url,
        ],
    );

    let body = scrape(&gw.rt, maddr);
    let h = img.header();
    assert_eq!(get(&body, "rbd_row_image_snapshots{image=\"img\"}"), 1.0);
    assert_eq!(
        get(&body, "rbd_row_image_epochs{image=\"img\"}"),
        h.epochs.len() as f64
    );
    assert_eq!(
        get(&body, "rbd_row_image_garbage_epochs{image=\"img\"}"),
        0.0
    );
    assert_eq!(
        get(&body, "rbd_row_image_hidden_epochs{image=\"img\"}"),
        0.0
    );
    assert_eq!(
        get(&body, "rbd_row_image_used_bytes{image=\"img\"}"),
        (MIB + (64 << 10)) as f64
    );
    assert_eq!(
        get(&body, "rbd_row_image_provisioned_bytes{image=\"img\"}"),
        SIZE as f64
    );
    // Only opened heads are reported.
    assert!(
        series(&body, "rbd_row_image_snapshots{image=\"idle\"}").is_none(),
        "{body}"
    );

    // NBD series of the export: bytes, ops, latency histogram, in-flight.
    assert_eq!(
        get(
            &body,
            "nbd_request_bytes_total{export=\"img\",op=\"write\"}"
        ),
        (MIB + 2 * (64 << 10)) as f64
    );
    assert_eq!(
        get(&body, "nbd_request_bytes_total{export=\"img\",op=\"read\"}"),
        (64 << 10) as f64
    );
    let writes = get(&body, "nbd_requests_total{export=\"img\",op=\"write\"}");
    assert!(writes >= 3.0, "{writes}");
    assert_eq!(
        get(
            &body,
            "nbd_request_duration_seconds_count{export=\"img\",op=\"write\"}"
        ),
        writes
    );
    assert_eq!(get(&body, "nbd_requests_in_flight{export=\"img\"}"), 0.0);

    // Backend calls: the writes and qemu's flushes reached the store.
    let mutations = get(&body, "rbd_row_backend_ops_total{kind=\"mutation\"}");
    let flushes = get(&body, "rbd_row_backend_ops_total{kind=\"flush\"}");
    let meta = get(&body, "rbd_row_backend_ops_total{kind=\"metadata_read\"}");
    let reads = get(&body, "rbd_row_backend_ops_total{kind=\"read\"}");
    assert!(mutations >= 3.0, "mutations {mutations}");
    assert!(flushes >= 1.0, "flushes {flushes}");
    assert!(meta >= 1.0, "metadata reads {meta}");
    assert!(reads >= 1.0, "reads {reads}");

    // Removing the snapshot leaves its epoch sealed but unpinned (it still
    // holds grains the head sees): a hidden epoch in the reclaim backlog.
    gw.rt.block_on(img.snap_remove("s1")).expect("snap_remove");
    let body = scrape(&gw.rt, maddr);
    let h = img.header();
    let hidden_now = h
        .epochs
        .iter()
        .filter(|(e, m)| {
            m.state == row_layer::records::EpochState::Sealed
                && !h.snapshots.iter().any(|s| s.epoch == **e)
        })
        .count();
    assert_eq!(get(&body, "rbd_row_image_snapshots{image=\"img\"}"), 0.0);
    assert_eq!(hidden_now, 1, "the unpinned epoch still holds head data");
    assert_eq!(
        get(&body, "rbd_row_image_hidden_epochs{image=\"img\"}"),
        hidden_now as f64
    );
    assert_eq!(
        get(&body, "rbd_row_image_garbage_epochs{image=\"img\"}"),
        h.garbage.len() as f64
    );
    assert_eq!(
        get(&body, "rbd_row_image_used_bytes{image=\"img\"}"),
        (MIB + (64 << 10)) as f64
    );
    let mutations2 = get(&body, "rbd_row_backend_ops_total{kind=\"mutation\"}");
    assert!(mutations2 > mutations, "{mutations2} <= {mutations}");
    eprintln!(
        "hidden after snap_remove: {hidden_now}, garbage: {}",
        h.garbage.len()
    );
    gw.shutdown();
}

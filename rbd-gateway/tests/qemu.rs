//! End-to-end tests with qemu-img / qemu-io / nbdinfo against an in-process
//! gateway.

mod common;

use common::*;
use rbd_gateway::ExportSelection;
use row_nbd::{ExportRegistry, NbdErrno};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: u64 = 8 * MIB;

/// Deterministic 8 MiB test pattern with all-zero regions and unaligned
/// data edges.
fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = vec![0u8; SIZE as usize];
    for (i, b) in v.iter_mut().enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let block = i / (64 << 10);
        if block % 5 != 3 && !(2 * MIB as usize..3 * MIB as usize).contains(&i) {
            *b = x as u8;
        }
    }
    // A short data run inside a zero region (sub-grain edges).
    v[2 * MIB as usize + 1000..2 * MIB as usize + 1100].fill(0x5a);
    v
}

#[test]
fn qemu_img_round_trip() {
    let gw = start(&[("img", SIZE), ("other", MIB)], ExportSelection::All, true);
    let src = gw.path("src.raw");
    let data = pattern();
    write_file(&src, &data);
    let src = src.to_str().expect("utf8 path");
    let url = gw.url("img");

    run_ok(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src, &url],
    );
    run_ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", src, &url],
    );
    let back = gw.path("back.raw");
    let back_s = back.to_str().expect("utf8 path");
    run_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &url, back_s],
    );
    let got = std::fs::read(&back).expect("read back");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "contents read back through NBD differ");

    // The engine holds the same bytes.
    let img = gw.image("img");
    let direct = gw.rt.block_on(img.read(0, SIZE)).expect("read");
    assert!(direct[..] == data[..], "engine contents differ");
    // pool/image resolves to the same image.
    run_ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", src, &gw.url("rbd/img")],
    );

    // NBD_OPT_LIST announces every image under --export-all.
    let out = run_ok("nbdinfo", &["--list", &gw.url("")]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(text.contains("export=\"img\":"), "{text}");
    assert!(text.contains("export=\"other\":"), "{text}");

    // /metrics over HTTP/1.0.
    let maddr = gw.metrics_addr.expect("metrics address");
    let body = gw.rt.block_on(async move {
        let mut s = tokio::net::TcpStream::connect(maddr)
            .await
            .expect("connect");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("recv");
        out
    });
    assert!(body.starts_with("HTTP/1.0 200 OK\r\n"), "{body}");
    assert!(body.contains("nbd_connections_accepted_total"), "{body}");
    assert!(body.contains("img"), "{body}");

    drop(img);
    gw.shutdown();
}

/// Writes pre-snapshot data through NBD, snapshots `s1` through the shared
/// handle; returns the expected snapshot contents.
fn snapshot_scenario(gw: &TestGateway) -> Vec<u8> {
    let url = gw.url("img");
    run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 1M 256k", &url],
    );
    run_ok("qemu-io", &["-f", "raw", "-c", "write -P 0x22 3M 4k", &url]);
    let mut expect = vec![0u8; SIZE as usize];
    expect[MIB as usize..MIB as usize + (256 << 10)].fill(0x11);
    expect[3 * MIB as usize..3 * MIB as usize + 4096].fill(0x22);
    let img = gw.image("img");
    gw.rt.block_on(img.snap_create("s1")).expect("snap_create");
    expect
}

#[test]
fn diff_and_allocation_maps() {
    let gw = start(
        &[("img", SIZE)],
        ExportSelection::Only(vec!["img".into()]),
        false,
    );
    snapshot_scenario(&gw);
    let url = gw.url("img");
    run_ok("qemu-io", &["-f", "raw", "-c", "write -P 0xab 0 64k", &url]);

    eprintln!(
        "{}",
        String::from_utf8_lossy(&run_ok("nbdinfo", &["--map=rbd-row:diff:s1", &url]).stdout)
    );
    let dirty = nbd_map(&url, Some("rbd-row:diff:s1"));
    assert_eq!(dirty, vec![(0, 65536, 1), (65536, SIZE - 65536, 0)]);
    let alias = nbd_map(&url, Some("qemu:dirty-bitmap:s1"));
    assert_eq!(alias, dirty);

    // base:allocation agrees with the engine's map.
    let alloc = nbd_map(&url, None);
    let img = gw.image("img");
    let mut from_engine: Vec<(u64, u64, u32)> = Vec::new();
    let mut pos = 0;
    for e in img.diff(None).expect("diff") {
        assert!(e.exists);
        if e.offset > pos {
            from_engine.push((pos, e.offset - pos, 3));
        }
        from_engine.push((e.offset, e.length, 0));
        pos = e.offset + e.length;
    }
    if pos < SIZE {
        from_engine.push((pos, SIZE - pos, 3));
    }
    assert_eq!(alloc, from_engine);
    assert_eq!(
        alloc,
        vec![
            (0, 65536, 0),
            (65536, MIB - 65536, 3),
            (MIB, 256 << 10, 0),
            (MIB + (256 << 10), 2 * MIB - (256 << 10), 3),
            (3 * MIB, 4096, 0),
            (3 * MIB + 4096, SIZE - 3 * MIB - 4096, 3),
        ]
    );

    // Contexts offered: base:allocation plus both names per snapshot.
    let backend = gw
        .rt
        .block_on(ExportRegistry::open(&*gw.registry, "img"))
        .expect("open export");
    assert_eq!(
        backend.meta_contexts(""),
        vec![
            "base:allocation".to_owned(),
            "rbd-row:diff:s1".to_owned(),
            "qemu:dirty-bitmap:s1".to_owned()
        ]
    );
    assert!(backend.can_multi_conn());
    drop((backend, img));
    gw.shutdown();
}

#[test]
fn snapshot_export_is_read_only() {
    let gw = start(
        &[("img", SIZE)],
        ExportSelection::Only(vec!["img".into()]),
        false,
    );
    let expect = snapshot_scenario(&gw);
    let url = gw.url("img");
    run_ok("qemu-io", &["-f", "raw", "-c", "write -P 0xab 0 64k", &url]);

    let snap_url = gw.url("img@s1");
    let out = gw.path("snap.raw");
    let out_s = out.to_str().expect("utf8 path");
    run_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &snap_url, out_s],
    );
    let got = std::fs::read(&out).expect("read snapshot copy");
    assert_eq!(got.len(), expect.len());
    assert!(
        got == expect,
        "snapshot export does not hold the pre-snapshot contents"
    );
    // The head moved on.
    let head = gw
        .rt
        .block_on(gw.image("img").read(0, 4))
        .expect("read head");
    assert_eq!(&head[..], &[0xab; 4]);

    // qemu refuses to write to the read-only export.
    let w = run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xcd 0 4k", &snap_url],
    );
    assert!(
        !w.status.success(),
        "qemu-io write to a snapshot export succeeded: {}",
        String::from_utf8_lossy(&w.stdout)
    );
    let stderr = String::from_utf8_lossy(&w.stderr).to_lowercase();
    eprintln!("qemu-io: {stderr}");
    assert!(
        stderr.contains("read-only")
            || stderr.contains("read only")
            || stderr.contains("permission"),
        "{stderr}"
    );
    // On the wire a write to the snapshot export is answered EPERM, while
    // the head accepts it.
    assert_eq!(raw_write_errno(gw.addr, "img@s1", 0, &[0xcd; 512]), 1);
    assert_eq!(raw_write_errno(gw.addr, "img", 8192, &[0xcd; 512]), 0);
    let head = gw
        .rt
        .block_on(gw.image("img").read(8192, 512))
        .expect("read head");
    assert!(head.iter().all(|b| *b == 0xcd));
    // At the backend level the write is EPERM (pool form of the name too).
    let backend = gw
        .rt
        .block_on(ExportRegistry::open(&*gw.registry, "rbd/img@s1"))
        .expect("open snapshot export");
    assert!(backend.read_only());
    let e = gw
        .rt
        .block_on(backend.write(0, bytes::Bytes::from_static(b"x"), false))
        .expect_err("write to snapshot");
    assert_eq!(e.errno, NbdErrno::Perm);
    let e = gw
        .rt
        .block_on(backend.write_zeroes(0, 4096, Default::default()))
        .expect_err("zero snapshot");
    assert_eq!(e.errno, NbdErrno::Perm);
    // Unknown exports are EINVAL.
    let e = gw
        .rt
        .block_on(ExportRegistry::open(&*gw.registry, "img@nope"))
        .err()
        .expect("missing snapshot");
    assert_eq!(e.errno, NbdErrno::Inval);
    let e = gw
        .rt
        .block_on(ExportRegistry::open(&*gw.registry, "otherimg"))
        .err()
        .expect("not exported");
    assert_eq!(e.errno, NbdErrno::Inval);

    // Still the pre-snapshot contents.
    run_ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", out_s, &snap_url],
    );
    drop(backend);
    gw.shutdown();
}

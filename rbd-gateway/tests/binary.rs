//! The `rbd-gateway` binary: serves, answers qemu, exits 0 on SIGTERM after
//! flushing and closing its images.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gateway_proc::GatewayProc;
use common::*;

/// The gateway binary on the local store in `store_dir`, bound to port 0.
fn spawn_gateway(store_dir: &Path, log_dir: &Path, args: &[&str]) -> GatewayProc {
    let store = store_dir.to_str().expect("utf8 path");
    let all: Vec<&str> = ["--store", store].iter().chain(args).copied().collect();
    GatewayProc::spawn(&all, log_dir)
}

/// SIGTERM; the exit status (which must be success) and the gateway's log.
fn stop_gateway(mut gw: GatewayProc, limit: Duration) -> String {
    let status = gw.terminate_within(limit);
    let log = gw.log();
    match status {
        Some(s) if s.success() => log,
        Some(s) => panic!("exit status {s}; log:\n{log}"),
        None => panic!("gateway did not exit on SIGTERM within {limit:?}; log:\n{log}"),
    }
}

#[test]
fn binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = pool_store(&local_stores(&store_dir), "rbd").await;
        create_image(&store, "disk", 4 * MIB).await;
    });

    let gw = spawn_gateway(
        &store_dir,
        dir.path(),
        &["--export", "rbd/disk", "--metrics", "127.0.0.1:0"],
    );
    let port = gw.port;
    let url = format!("nbd://127.0.0.1:{port}/rbd/disk");
    run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x42 1M 64k", &url],
    );
    let out = run_ok("qemu-io", &["-f", "raw", "-c", "read -P 0x42 1M 64k", &url]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("read 65536/65536"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The single --export is the default export (empty name).
    let out = run_ok("nbdinfo", &["--size", &format!("nbd://127.0.0.1:{port}")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (4 * MIB).to_string()
    );

    let stderr = stop_gateway(gw, Duration::from_secs(20));
    assert!(stderr.contains("image closed"), "{stderr}");

    // The data is durable in the store and the image was released.
    rt.block_on(async {
        let store = pool_store(&local_stores(&store_dir), "rbd").await;
        let img = store
            .open("disk")
            .await
            .expect("reopen image (lock released)");
        let got = img.read(MIB, 65536).await.expect("read");
        assert!(got.iter().all(|b| *b == 0x42));
        let zero = img.read(0, 4096).await.expect("read");
        assert!(zero.iter().all(|b| *b == 0));
        img.close().await.expect("close");
    });
}

fn scrape_blocking(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp
}

/// Mutual TLS through the binary's flags; SIGTERM with a TLS client in
/// transmission and a plain one stuck in the handshake still drains, flushes
/// and exits 0.
#[test]
fn binary_tls_stops_on_sigterm_with_connections_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let pki = make_pki(&dir.path().join("pki"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = pool_store(&local_stores(&store_dir), "rbd").await;
        create_image(&store, "disk", 4 * MIB).await;
    });
    let path = |p: &std::path::Path| p.to_str().expect("utf8 path").to_owned();
    let (cert, key, ca) = (
        path(&pki.server_cert),
        path(&pki.server_key),
        path(&pki.ca_cert),
    );
    let gw = spawn_gateway(
        &store_dir,
        dir.path(),
        &[
            "--export",
            "disk",
            "--metrics",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
        ],
    );
    let port = gw.port;
    let mport = gw.metrics.expect("metrics address logged").port();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Plain text is refused.
    let out = run(
        "nbdinfo",
        &["--size", &format!("nbd://127.0.0.1:{port}/disk")],
    );
    assert!(
        !out.status.success(),
        "plain client served under --tls-cert"
    );

    // A qemu-io session over mutual TLS that stays connected.
    let obj = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        path(&pki.client_dir)
    );
    let opts = format!("driver=nbd,host=127.0.0.1,port={port},export=disk,tls-creds=tls0");
    let mut qemu = Command::new("qemu-io")
        .args(["--object", &obj, "--image-opts", &opts])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu-io");
    {
        use std::io::Write;
        let stdin = qemu.stdin.as_mut().expect("qemu-io stdin");
        stdin
            .write_all(b"write -P 0x5a 1M 64k\n")
            .expect("qemu-io command");
        stdin.flush().expect("flush");
    }
    // And a plain TCP client idling in the handshake.
    let _idle = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    loop {
        let m = scrape_blocking(mport);
        if m.contains("nbd_request_bytes_total{export=\"disk\",op=\"write\"} 65536")
            && m.contains("nbd_export_connections{export=\"disk\"} 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "TLS write never arrived:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let stop_at = Instant::now();
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stop_gateway(gw, Duration::from_secs(25))
    }));
    let took = stop_at.elapsed();
    drop(qemu.stdin.take());
    let _ = qemu.kill();
    let _ = qemu.wait();
    let stderr = stopped.unwrap_or_else(|p| std::panic::resume_unwind(p));
    assert!(stderr.contains("TLS enabled"), "{stderr}");
    assert!(stderr.contains("image closed"), "{stderr}");
    eprintln!("gateway stopped {took:?} after SIGTERM");

    rt.block_on(async {
        let store = pool_store(&local_stores(&store_dir), "rbd").await;
        let img = store.open("disk").await.expect("reopen image");
        let got = img.read(MIB, 65536).await.expect("read");
        assert!(got.iter().all(|b| *b == 0x5a));
        img.close().await.expect("close");
    });
}

/// `--max-connections` and `--max-buffered-bytes` reach the server: with a
/// limit of one, a second client is closed without a greeting and the
/// refusal is logged.
#[test]
fn binary_connection_limit_flags() {
    use std::io::Read;
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = pool_store(&local_stores(&store_dir), "rbd").await;
        create_image(&store, "disk", 4 * MIB).await;
    });
    let gw = spawn_gateway(
        &store_dir,
        dir.path(),
        &[
            "--export",
            "disk",
            "--max-connections",
            "1",
            "--max-buffered-bytes",
            "1M",
        ],
    );
    let port = gw.port;
    // The first client gets the greeting (NBDMAGIC, IHAVEOPT, flags).
    let mut first = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut greeting = [0u8; 18];
    first.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    // The second is closed without one.
    let mut second = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 18];
    match second.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("refused client got {n} bytes"),
    }
    drop((first, second));
    let stderr = stop_gateway(gw, Duration::from_secs(20));
    assert!(
        stderr.contains("max_connections=1") && stderr.contains("max_buffered_bytes=1048576"),
        "{stderr}"
    );
    assert!(
        stderr.contains("refusing NBD connection: connection limit reached"),
        "{stderr}"
    );
}

/// `--defrag-interval`: the gateway rewrites a fragmented export in the
/// background while serving it; what NBD reads and what the snapshots hold
/// do not change, and a later pass finds nothing left to do.
#[test]
fn binary_defragments_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let size = 8 * MIB;
    let (head, snap0, changed) = rt.block_on(async {
        let store = pool_store(&local_stores(&store_dir), "rbd").await;
        create_image(&store, "disk", size).await;
        let img = store.open("disk").await.expect("open");
        img.write(0, bytes::Bytes::from(vec![7u8; size as usize]))
            .await
            .expect("fill");
        let snap0 = img.read(0, size).await.expect("read");
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for s in 0..6u64 {
            img.snap_create(&format!("s{s}")).await.expect("snap");
            for i in 0..64u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let block = vec![(s * 64 + i) as u8; 4096];
                img.write((x % (size / 4096)) * 4096, block.into())
                    .await
                    .expect("write");
            }
        }
        let head = img.read(0, size).await.expect("read");
        let changed: Vec<(u64, u64)> = (img.diff(Some("s5")).expect("diff").iter())
            .map(|e| (e.offset, e.length))
            .collect();
        img.flush().await.expect("flush");
        img.close().await.expect("close");
        (head, snap0, changed)
    });

    let gw = spawn_gateway(
        &store_dir,
        dir.path(),
        &[
            "--export",
            "rbd/disk",
            "--defrag-interval",
            "1",
            "--defrag-min-reads",
            "2",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gw.log().contains("background defragmentation pass") {
        assert!(Instant::now() < deadline, "no pass logged:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let out_file = dir.path().join("head.raw");
    let url = format!("nbd://127.0.0.1:{}/rbd/disk", gw.port);
    run_ok("nbdcopy", &[&url, out_file.to_str().expect("utf8")]);
    let served = std::fs::read(&out_file).expect("read copy");
    assert!(
        served == head[..],
        "NBD reads changed after defragmentation"
    );
    // The changed-block map a backup reads still lists only the writes
    // since s5, not the rewritten grains.
    let dirty: Vec<(u64, u64)> = (nbd_map(&url, Some("rbd-row:diff:s5")).into_iter())
        .filter(|e| e.2 == 1)
        .map(|e| (e.0, e.1))
        .collect();
    assert!(!changed.is_empty());
    assert_eq!(dirty, changed, "the diff map grew with the pass");
    stop_gateway(gw, Duration::from_secs(20));

    rt.block_on(async {
        let store = pool_store(&local_stores(&store_dir), "rbd").await;
        let img = store.open("disk").await.expect("reopen");
        assert!(img.read(0, size).await.expect("read") == head);
        let opts = row_layer::DefragOptions {
            min_reads: 2,
            bytes_per_sec: 0,
        };
        let r = img.defragment(&opts).await.expect("defragment");
        assert_eq!(r.objects_rewritten, 0, "{r:?}");
        let s0 = store.open_snapshot("disk", "s0").await.expect("s0");
        assert!(s0.read(0, size).await.expect("read") == snap0);
        img.close().await.expect("close");
    });

    let out = Command::new(env!("CARGO_BIN_EXE_rbd-gateway"))
        .args(["--export", "disk", "--defrag-min-reads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run rbd-gateway");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be at least 2"), "{err}");
}

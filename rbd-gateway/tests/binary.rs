//! The `rbd-gateway` binary: serves, answers qemu, exits 0 on SIGTERM after
//! flushing and closing its images.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
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

    let port = free_port();
    let mport = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbd-gateway"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--export",
            "rbd/disk",
            "--metrics",
            &format!("127.0.0.1:{mport}"),
        ])
        .env("RBD_ROW_STORE", &store_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rbd-gateway");
    let url = format!("nbd://127.0.0.1:{port}/rbd/disk");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
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

    run_ok("kill", &["-TERM", &child.id().to_string()]);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "gateway did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
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
    let port = free_port();
    let mport = free_port();
    let path = |p: &std::path::Path| p.to_str().expect("utf8 path").to_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbd-gateway"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--export",
            "disk",
            "--metrics",
            &format!("127.0.0.1:{mport}"),
            "--tls-cert",
            &path(&pki.server_cert),
            "--tls-key",
            &path(&pki.server_key),
            "--tls-ca",
            &path(&pki.ca_cert),
        ])
        .env("RBD_ROW_STORE", &store_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rbd-gateway");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "gateway did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
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
    run_ok("kill", &["-TERM", &child.id().to_string()]);
    let exit_deadline = Instant::now() + Duration::from_secs(25);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > exit_deadline {
            let _ = child.kill();
            let _ = qemu.kill();
            panic!("gateway did not exit on SIGTERM with TLS connections open");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = stop_at.elapsed();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    drop(qemu.stdin.take());
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
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
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbd-gateway"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--export",
            "disk",
            "--max-connections",
            "1",
            "--max-buffered-bytes",
            "1M",
        ])
        .env("RBD_ROW_STORE", &store_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rbd-gateway");
    let deadline = Instant::now() + Duration::from_secs(20);
    // The first client gets the greeting (NBDMAGIC, IHAVEOPT, flags).
    let mut first = loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        assert!(Instant::now() < deadline, "gateway did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    };
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
    run_ok("kill", &["-TERM", &child.id().to_string()]);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "gateway did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(
        stderr.contains("max_connections=1") && stderr.contains("max_buffered_bytes=1048576"),
        "{stderr}"
    );
    assert!(
        stderr.contains("refusing NBD connection: connection limit reached"),
        "{stderr}"
    );
}

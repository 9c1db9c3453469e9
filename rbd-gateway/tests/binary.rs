//! The `rbd-gateway` binary: serves, answers qemu, exits 0 on SIGTERM after
//! flushing and closing its images.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use row_layer::backend::local::LocalBackend;
use row_layer::Store;

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
        let store = Store::new(Arc::new(LocalBackend::open(&store_dir).expect("store")));
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
        let store = Store::new(Arc::new(
            LocalBackend::open(&store_dir).expect("reopen store"),
        ));
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

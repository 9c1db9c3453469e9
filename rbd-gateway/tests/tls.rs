//! NBD over TLS (`NBD_OPT_STARTTLS`, rustls on the server) with real
//! clients: qemu-img (GnuTLS through `tls-creds-x509`) and nbdinfo (libnbd,
//! GnuTLS). Certificates are made per test with the `openssl` CLI.

mod common;

use std::process::Output;

use common::*;
use rbd_gateway::{ExportSelection, TlsFiles};

const SIZE: u64 = 4 * MIB;

fn pattern() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    let mut v = vec![0u8; SIZE as usize];
    for (i, b) in v.iter_mut().enumerate() {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        // Leave every fourth 64 KiB block zero.
        if (i / (64 << 10)) % 4 != 1 {
            *b = (x >> 24) as u8;
        }
    }
    v
}

fn tls_gateway(pki: &Pki, mutual: bool, required: bool, metrics: bool) -> TestGateway {
    let files = TlsFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: mutual.then(|| pki.ca_cert.clone()),
        required,
    };
    let tls = files.load().expect("load TLS files");
    start_with(
        &[("img", SIZE)],
        ExportSelection::Only(vec!["img".into()]),
        metrics,
        move |c| c.server.tls = Some(tls),
    )
}

/// `--object tls-creds-x509,...` for qemu with the creds in `dir`.
fn qemu_object(dir: &std::path::Path, priority: Option<&str>) -> String {
    let mut o = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        dir.to_str().expect("utf8 path")
    );
    if let Some(p) = priority {
        o.push_str(&format!(",priority={p}"));
    }
    o
}

fn qemu_nbd_opts(gw: &TestGateway, export: &str) -> String {
    format!(
        "driver=nbd,host=127.0.0.1,port={},export={export},tls-creds=tls0",
        gw.addr.port()
    )
}

fn nbds_url(gw: &TestGateway, export: &str, dir: &std::path::Path) -> String {
    format!(
        "nbds://127.0.0.1:{}/{export}?tls-certificates={}",
        gw.addr.port(),
        dir.to_str().expect("utf8 path")
    )
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// qemu-img convert + compare over TLS (1.3 by default, 1.2 forced), data
/// checked against the engine; nbdinfo over `nbds://`; a plain-text client
/// is refused under FORCEDTLS.
#[test]
fn forced_tls_with_qemu_and_nbdinfo() {
    // The gateway needs the PKI before it binds: make it in a scratch dir.
    let scratch = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(scratch.path());
    let gw = tls_gateway(&pki, false, true, true);
    let src = gw.path("src.raw");
    let data = pattern();
    write_file(&src, &data);
    let src_s = src.to_str().expect("utf8 path");
    let obj13 = qemu_object(&pki.anon_dir, None);
    let target = qemu_nbd_opts(&gw, "img");

    run_ok(
        "qemu-img",
        &[
            "convert",
            "-n",
            "--object",
            &obj13,
            "-f",
            "raw",
            "--target-image-opts",
            src_s,
            &target,
        ],
    );
    let src_opts = format!("driver=file,filename={src_s}");
    run_ok(
        "qemu-img",
        &[
            "compare",
            "--object",
            &obj13,
            "--image-opts",
            &src_opts,
            &target,
        ],
    );
    // Again with TLS 1.2 only.
    let obj12 = qemu_object(&pki.anon_dir, Some("NORMAL:-VERS-ALL:+VERS-TLS1.2"));
    run_ok(
        "qemu-img",
        &[
            "compare",
            "--object",
            &obj12,
            "--image-opts",
            &src_opts,
            &target,
        ],
    );
    let img = gw.image("img");
    let direct = gw.rt.block_on(img.read(0, SIZE)).expect("read");
    assert!(direct[..] == data[..], "engine contents differ");

    // libnbd: nbds:// with the qemu-style credentials directory.
    let out = run_ok("nbdinfo", &["--size", &nbds_url(&gw, "img", &pki.anon_dir)]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        SIZE.to_string()
    );
    let out = run_ok("nbdinfo", &[&nbds_url(&gw, "img", &pki.anon_dir)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("with TLS"), "{text}");

    // Plain text is refused (NBD_REP_ERR_TLS_REQD), by libnbd and by qemu.
    let out = run("nbdinfo", &["--size", &gw.url("img")]);
    assert!(!out.status.success(), "plain nbdinfo was served");
    let err = stderr_of(&out);
    assert!(err.to_lowercase().contains("tls"), "{err}");
    let out = run("qemu-img", &["info", "-f", "raw", &gw.url("img")]);
    assert!(!out.status.success(), "plain qemu-img was served");

    // A client that does not trust the server's CA refuses it.
    let untrusted = gw.path("untrusted");
    std::fs::create_dir_all(&untrusted).expect("mkdir");
    std::fs::copy(
        scratch.path().join("rogue-ca-cert.pem"),
        untrusted.join("ca-cert.pem"),
    )
    .expect("copy");
    let out = run("nbdinfo", &["--size", &nbds_url(&gw, "img", &untrusted)]);
    assert!(!out.status.success(), "client accepted an untrusted server");

    let body = scrape(&gw.rt, gw.metrics_addr.expect("metrics"));
    let failures = series(&body, "nbd_handshake_failures_total").expect("series");
    assert!(failures >= 3.0, "handshake failures {failures}\n{body}");
    gw.shutdown();
}

/// With `--tls-ca`: a client with a certificate signed by the CA is served
/// (qemu-img and nbdinfo); none, or one from another CA, is refused.
#[test]
fn mutual_tls_requires_client_certificate() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(scratch.path());
    let gw = tls_gateway(&pki, true, true, false);
    let obj = qemu_object(&pki.client_dir, None);
    let target = qemu_nbd_opts(&gw, "img");
    run_ok(
        "qemu-io",
        &[
            "--object",
            &obj,
            "--image-opts",
            &target,
            "-c",
            "write -P 0x3c 64k 128k",
            "-c",
            "read -P 0x3c 64k 128k",
        ],
    );
    let obj12 = qemu_object(&pki.client_dir, Some("NORMAL:-VERS-ALL:+VERS-TLS1.2"));
    run_ok(
        "qemu-io",
        &[
            "--object",
            &obj12,
            "--image-opts",
            &target,
            "-c",
            "read -P 0x3c 64k 128k",
        ],
    );
    let out = run_ok(
        "nbdinfo",
        &["--size", &nbds_url(&gw, "img", &pki.client_dir)],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        SIZE.to_string()
    );

    for (what, dir) in [("no", &pki.anon_dir), ("an untrusted", &pki.rogue_dir)] {
        let out = run("nbdinfo", &["--size", &nbds_url(&gw, "img", dir)]);
        assert!(
            !out.status.success(),
            "nbdinfo with {what} client certificate was served"
        );
        eprintln!(
            "nbdinfo with {what} client certificate: {}",
            stderr_of(&out)
        );
        let obj = qemu_object(dir, None);
        let out = run(
            "qemu-io",
            &["--object", &obj, "--image-opts", &target, "-c", "read 0 4k"],
        );
        eprintln!(
            "qemu-io with {what} client certificate: {}",
            stderr_of(&out)
        );
        let served =
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("read 4096/4096");
        assert!(
            !served,
            "qemu-io with {what} client certificate was served: {}",
            stderr_of(&out)
        );
    }
    // The data written over mutual TLS is in the engine.
    let img = gw.image("img");
    let got = gw.rt.block_on(img.read(64 << 10, 128 << 10)).expect("read");
    assert!(got.iter().all(|b| *b == 0x3c));
    gw.shutdown();
}

/// `--tls-optional`: plain-text and TLS clients are both served.
#[test]
fn optional_tls_serves_both() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(scratch.path());
    let gw = tls_gateway(&pki, false, false, false);
    let out = run_ok("nbdinfo", &["--size", &gw.url("img")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        SIZE.to_string()
    );
    let out = run_ok("nbdinfo", &["--size", &nbds_url(&gw, "img", &pki.anon_dir)]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        SIZE.to_string()
    );
    gw.shutdown();
}

/// Bad key material fails at load time with a readable error.
#[test]
fn tls_files_errors() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(scratch.path());
    let missing = TlsFiles {
        cert: scratch.path().join("nope.pem"),
        key: pki.server_key.clone(),
        client_ca: None,
        required: true,
    };
    let e = format!("{:#}", missing.load().err().expect("missing cert accepted"));
    assert!(e.contains("nope.pem"), "{e}");
    // A key that does not belong to the certificate.
    let mismatched = TlsFiles {
        cert: pki.server_cert.clone(),
        key: scratch.path().join("client-key.pem"),
        client_ca: None,
        required: true,
    };
    assert!(mismatched.load().is_err(), "mismatched key accepted");
    // A key file given as the CA.
    let bad_ca = TlsFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.server_key.clone()),
        required: true,
    };
    assert!(bad_ca.load().is_err(), "key accepted as CA bundle");
}

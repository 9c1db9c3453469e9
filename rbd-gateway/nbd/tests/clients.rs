//! Interoperability with real NBD clients: qemu-img / qemu-io (qemu-utils)
//! and nbdinfo / nbdcopy (libnbd-bin). These tools must be installed; the
//! tests fail loudly otherwise.

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use common::{timed, TestServer};
use row_nbd::{ExportBackend, MemExport, Op, ServerConfig, StaticRegistry};

const SIZE: usize = 16 << 20;

/// Deterministic image: data islands separated by large zero areas.
fn make_image() -> Vec<u8> {
    let mut v = vec![0u8; SIZE];
    let mut x: u32 = 0x1234_5678;
    for (start, len) in [
        (0usize, 65536usize),
        (1 << 20, 300_000),
        (5 << 20, 4096),
        (9 << 20, 1 << 20),
        (SIZE - 8192, 8192),
    ] {
        for b in &mut v[start..start + len] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = (x as u8) | 1; // never zero, so the islands are all data
        }
    }
    v
}

async fn run(program: &str, args: Vec<String>) -> Output {
    let p = program.to_owned();
    let shown = format!("{program} {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(&p).args(&args).output())
        .await
        .expect("join")
        .unwrap_or_else(|e| {
            panic!("cannot run `{shown}`: {e} (install qemu-utils and libnbd-bin: apt-get install -y qemu-utils libnbd-bin)")
        });
    assert!(
        out.status.success(),
        "`{shown}` failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(x: impl AsRef<str>) -> String {
    x.as_ref().to_owned()
}

fn path(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_owned()
}

async fn server_with(name: &str, mem: Arc<MemExport>) -> TestServer {
    let reg = Arc::new(StaticRegistry::new());
    reg.insert(name, mem as Arc<dyn ExportBackend>);
    TestServer::start(reg, ServerConfig::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_roundtrip_compare_and_qemu_io() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let back = dir.path().join("back.raw");
    let image = make_image();
    std::fs::write(&src, &image).unwrap();
    let mem = Arc::new(MemExport::new(SIZE as u64));
    let srv = server_with("img", mem.clone()).await;
    let url = format!("nbd://{}/img", srv.addr);
    timed(async {
        // Into the export (-n: the target exists already).
        run(
            "qemu-img",
            vec![
                s("convert"),
                s("-n"),
                s("-f"),
                s("raw"),
                s("-O"),
                s("raw"),
                path(&src),
                url.clone(),
            ],
        )
        .await;
        assert!(
            mem.snapshot() == image,
            "export content differs after qemu-img convert"
        );
        // And back out.
        run(
            "qemu-img",
            vec![
                s("convert"),
                s("-f"),
                s("raw"),
                s("-O"),
                s("raw"),
                url.clone(),
                path(&back),
            ],
        )
        .await;
        assert!(
            std::fs::read(&back).unwrap() == image,
            "round-tripped file differs"
        );
        let out = run(
            "qemu-img",
            vec![
                s("compare"),
                s("-f"),
                s("raw"),
                s("-F"),
                s("raw"),
                path(&src),
                url.clone(),
            ],
        )
        .await;
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("identical"),
            "{out:?}"
        );
        let out = run("qemu-img", vec![s("info"), s("-f"), s("raw"), url.clone()]).await;
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("16 MiB"),
            "{out:?}"
        );
        // qemu-io: pattern write + verify, write-zeroes, discard.
        let out = run(
            "qemu-io",
            vec![
                s("-f"),
                s("raw"),
                s("-c"),
                s("write -P 0xab 2M 128k"),
                s("-c"),
                s("read -P 0xab 2M 128k"),
                s("-c"),
                s("write -z 2M 64k"),
                s("-c"),
                s("read -P 0 2M 64k"),
                s("-c"),
                s("discard 3M 64k"),
                s("-c"),
                s("flush"),
                url.clone(),
            ],
        )
        .await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains("fail") && !text.contains("error"),
            "qemu-io reported: {text}"
        );
        let snap = mem.snapshot();
        let em = srv.config.metrics.get("img").expect("metrics");
        // qemu used structured replies + base:allocation, write-zeroes and trim.
        assert!(em.op(Op::BlockStatus).ops() > 0);
        assert!(em.op(Op::WriteZeroes).ops() > 0);
        assert!(em.op(Op::Trim).ops() > 0);
        assert_eq!(em.op(Op::Read).errors() + em.op(Op::Write).errors(), 0);
        assert!(snap[(2 << 20)..(2 << 20) + 65536].iter().all(|b| *b == 0));
        assert!(snap[(2 << 20) + 65536..(2 << 20) + 131072]
            .iter()
            .all(|b| *b == 0xab));
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_reports_size_flags_and_holes() {
    let mem = Arc::new(MemExport::from_vec(make_image()));
    let srv = server_with("img", mem).await;
    let url = format!("nbd://{}/img", srv.addr);
    timed(async {
        let out = run("nbdinfo", vec![s("--json"), url.clone()]).await;
        let json = String::from_utf8_lossy(&out.stdout).into_owned();
        let compact: String = json.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(
            compact.contains(&format!("\"export-size\":{SIZE}")),
            "{json}"
        );
        assert!(compact.contains("\"can_multi_conn\":true"), "{json}");
        assert!(
            compact.contains("\"can_fua\":true") && compact.contains("\"can_zero\":true"),
            "{json}"
        );
        assert!(
            compact.contains("\"can_fast_zero\":true") && compact.contains("\"can_df\":true"),
            "{json}"
        );
        assert!(compact.contains("\"is_read_only\":false"), "{json}");

        let out = run("nbdinfo", vec![s("--map"), url.clone()]).await;
        let map = String::from_utf8_lossy(&out.stdout).into_owned();
        // Expected: data at [0,64K), hole up to 1M, ...
        let rows: Vec<(u64, u64, u32)> = map
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                ))
            })
            .collect();
        assert!(!rows.is_empty(), "no map rows in:\n{map}");
        assert_eq!(rows[0], (0, 65536, 0), "{map}");
        assert_eq!(rows[1], (65536, (1 << 20) - 65536, 3), "{map}");
        assert!(map.contains("hole,zero") && map.contains("data"), "{map}");
        let total: u64 = rows.iter().map(|r| r.1).sum();
        assert_eq!(total, SIZE as u64, "{map}");
        let holes: u64 = rows.iter().filter(|r| r.2 == 3).map(|r| r.1).sum();
        assert!(holes > (SIZE as u64) / 2, "{map}");
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_multi_conn_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let back = dir.path().join("back.raw");
    let image = make_image();
    std::fs::write(&src, &image).unwrap();
    let mem = Arc::new(MemExport::new(SIZE as u64));
    let srv = server_with("img", mem.clone()).await;
    let url = format!("nbd://{}/img", srv.addr);
    timed(async {
        run(
            "nbdcopy",
            vec![
                s("--connections=4"),
                s("--threads=4"),
                s("--requests=16"),
                path(&src),
                url.clone(),
            ],
        )
        .await;
        assert!(
            mem.snapshot() == image,
            "export content differs after nbdcopy"
        );
        let em = srv.config.metrics.get("img").expect("metrics");
        let conns_in = em.connections_total();
        assert!(
            conns_in >= 4,
            "nbdcopy should use multi-conn, saw {conns_in} connections"
        );
        run(
            "nbdcopy",
            vec![
                s("--connections=4"),
                s("--threads=4"),
                url.clone(),
                path(&back),
            ],
        )
        .await;
        assert!(
            std::fs::read(&back).unwrap() == image,
            "nbdcopy read-back differs"
        );
        assert!(em.connections_total() >= conns_in + 4);
        assert_eq!(em.connections(), 0);
        let text = srv.config.metrics.render_prometheus();
        assert!(
            text.contains("nbd_request_bytes_total{export=\"img\",op=\"write\"}"),
            "{text}"
        );
    })
    .await;
    srv.shutdown().await;
}

//! Shared harness: an in-process gateway over a LocalBackend in a tempdir,
//! driven by the real qemu/libnbd tools.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use rbd_gateway::{ExportSelection, Gateway, GatewayConfig, ImageRegistry};
use row_layer::backend::local::LocalBackend;
use row_layer::{CreateOptions, Image, Store};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

pub const MIB: u64 = 1 << 20;

pub struct TestGateway {
    pub rt: Runtime,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub registry: Arc<ImageRegistry>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Creates the images through the library, then binds and starts a gateway
/// on 127.0.0.1:0 serving `selection`.
pub fn start(
    images: &[(&str, u64)],
    selection: ExportSelection,
    with_metrics: bool,
) -> TestGateway {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let (gw, addr, metrics_addr, registry) = rt.block_on(async {
        let backend = LocalBackend::open(&store_dir).expect("open local store");
        let store = Store::new(Arc::new(backend));
        for (name, size) in images {
            create_image(&store, name, *size).await;
        }
        let mut config = GatewayConfig::new(store, selection);
        config.listen = vec!["127.0.0.1:0".parse().expect("addr")];
        if with_metrics {
            config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        }
        let gw = Gateway::bind(config).await.expect("bind gateway");
        let addr = gw.local_addrs()[0];
        let metrics_addr = gw.metrics_addr();
        let registry = gw.registry();
        (gw, addr, metrics_addr, registry)
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = rt.spawn(gw.run(async move {
        let _ = stopped.await;
    }));
    TestGateway {
        rt,
        dir,
        addr,
        metrics_addr,
        registry,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Test helper: creates an image through the library.
pub async fn create_image(store: &Store, name: &str, size: u64) {
    store
        .create(name, CreateOptions::with_size(size))
        .await
        .expect("create image");
}

impl TestGateway {
    pub fn url(&self, export: &str) -> String {
        format!("nbd://{}:{}/{}", self.addr.ip(), self.addr.port(), export)
    }

    /// The shared image behind `export` (registry test hook).
    pub fn image(&self, export: &str) -> Image {
        self.rt
            .block_on(self.registry.image(export))
            .expect("open image through the registry")
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Graceful shutdown; asserts the gateway drained and closed cleanly.
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            self.rt
                .block_on(task)
                .expect("gateway task panicked")
                .expect("gateway run failed");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs a command, returning its output (never panics on failure).
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a command and asserts success.
pub fn run_ok(program: &str, args: &[&str]) -> Output {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `nbdinfo --map[=context] url` as merged (offset, length, type) triples.
pub fn nbd_map(url: &str, context: Option<&str>) -> Vec<(u64, u64, u32)> {
    let flag = match context {
        Some(c) => format!("--map={c}"),
        None => "--map".to_owned(),
    };
    let out = run_ok("nbdinfo", &[&flag, url]);
    let text = String::from_utf8(out.stdout).expect("utf8");
    let mut v: Vec<(u64, u64, u32)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut w = line.split_whitespace();
        let mut next = |what: &str| -> u64 {
            w.next()
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("bad nbdinfo line {line:?} ({what})"))
        };
        let (off, len, ty) = (next("offset"), next("length"), next("type") as u32);
        match v.last_mut() {
            Some(last) if last.2 == ty && last.0 + last.1 == off => last.1 += len,
            _ => v.push((off, len, ty)),
        }
    }
    v
}

pub fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("write file");
}

/// Minimal raw NBD client: fixed-newstyle handshake, `NBD_OPT_GO` on
/// `export`, then one `NBD_CMD_WRITE` of `data` at `offset`; returns the
/// errno of the simple reply (0 = success).
pub fn raw_write_errno(addr: SocketAddr, export: &str, offset: u64, data: &[u8]) -> u32 {
    use row_nbd::proto::*;
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut b8 = [0u8; 8];
    let mut b4 = [0u8; 4];
    let mut b2 = [0u8; 2];
    s.read_exact(&mut b8).expect("magic");
    assert_eq!(u64::from_be_bytes(b8), NBDMAGIC);
    s.read_exact(&mut b8).expect("ihaveopt");
    assert_eq!(u64::from_be_bytes(b8), IHAVEOPT);
    s.read_exact(&mut b2).expect("flags");
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
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
    s.write_all(&msg).expect("NBD_OPT_GO");
    loop {
        s.read_exact(&mut b8).expect("reply magic");
        assert_eq!(u64::from_be_bytes(b8), OPT_REPLY_MAGIC);
        s.read_exact(&mut b4).expect("reply opt");
        s.read_exact(&mut b4).expect("reply type");
        let typ = u32::from_be_bytes(b4);
        s.read_exact(&mut b4).expect("reply len");
        let mut payload = vec![0u8; u32::from_be_bytes(b4) as usize];
        s.read_exact(&mut payload).expect("reply payload");
        assert!(typ & (1 << 31) == 0, "NBD_OPT_GO refused: {typ:#x}");
        if typ == REP_ACK {
            break;
        }
    }
    let mut req = Vec::new();
    req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&CMD_WRITE.to_be_bytes());
    req.extend_from_slice(&0x1234u64.to_be_bytes());
    req.extend_from_slice(&offset.to_be_bytes());
    req.extend_from_slice(&(data.len() as u32).to_be_bytes());
    req.extend_from_slice(data);
    s.write_all(&req).expect("NBD_CMD_WRITE");
    s.read_exact(&mut b4).expect("simple reply magic");
    assert_eq!(u32::from_be_bytes(b4), SIMPLE_REPLY_MAGIC);
    s.read_exact(&mut b4).expect("errno");
    let errno = u32::from_be_bytes(b4);
    s.read_exact(&mut b8).expect("handle");
    assert_eq!(u64::from_be_bytes(b8), 0x1234);
    errno
}

//! Shared harness: an in-process gateway over the local store in a tempdir
//! (opened through the CLI's `Stores`, so images live where `rbd-row` puts
//! them: pool `rbd` in `<tempdir>/store/rbd`), driven by the real
//! qemu/libnbd tools.

#![allow(dead_code, unreachable_pub)]

pub mod ceph_cli;
pub mod gateway_proc;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use rbd_gateway::{ExportSelection, Gateway, GatewayConfig, ImageRegistry};
use rbd_row_cli::store_select::{StoreTarget, Stores};
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
    /// The stores the gateway serves (local store rooted at `<dir>/store`).
    pub stores: Arc<Stores>,
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
    start_with(images, selection, with_metrics, |_| {})
}

/// [`start`], with a hook to adjust the configuration (TLS, tunables)
/// before binding.
pub fn start_with(
    images: &[(&str, u64)],
    selection: ExportSelection,
    with_metrics: bool,
    configure: impl FnOnce(&mut GatewayConfig),
) -> TestGateway {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let stores = local_stores(&store_dir);
    let (gw, addr, metrics_addr, registry) = rt.block_on(async {
        let store = pool_store(&stores, "rbd").await;
        for (name, size) in images {
            create_image(&store, name, *size).await;
        }
        let mut config = GatewayConfig::new(stores.clone(), selection);
        config.listen = vec!["127.0.0.1:0".parse().expect("addr")];
        if with_metrics {
            config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        }
        configure(&mut config);
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
        stores,
        stop: Some(stop),
        task: Some(task),
    }
}

/// The stores of the local store rooted at `dir`, as `rbd-row --store DIR`
/// and `rbd-gateway --store DIR` open them.
pub fn local_stores(dir: &Path) -> Arc<Stores> {
    Arc::new(Stores::new(StoreTarget::Local {
        dir: dir.to_path_buf(),
        is_default: false,
    }))
}

/// The store of `pool` (default namespace), created if missing.
pub async fn pool_store(stores: &Stores, pool: &str) -> Store {
    stores
        .get(pool, "", true)
        .await
        .expect("open pool store")
        .expect("pool store")
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

    /// The store of pool `rbd` (where unqualified exports live).
    pub fn store(&self) -> Store {
        self.rt.block_on(pool_store(&self.stores, "rbd"))
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

/// Test PKI made with the `openssl` CLI: a CA, a server certificate for
/// 127.0.0.1/localhost signed by it, and client credential directories in
/// the layout qemu's `tls-creds-x509` and libnbd's `tls-certificates` read
/// (`ca-cert.pem`, `client-cert.pem`, `client-key.pem`).
pub struct Pki {
    pub ca_cert: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    /// CA + a client certificate signed by the CA.
    pub client_dir: std::path::PathBuf,
    /// CA only: the client presents no certificate.
    pub anon_dir: std::path::PathBuf,
    /// CA + a client certificate signed by another (untrusted) CA.
    pub rogue_dir: std::path::PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a CA (`<name>-cert.pem`, `<name>-key.pem`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}-cert.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=rbd-row test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// Makes `<name>-cert.pem`/`<name>-key.pem` signed by CA `ca` with the
/// given extensions.
fn make_leaf(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-cert.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-out",
            &format!("{name}-cert.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

pub fn make_pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).expect("pki dir");
    make_ca(dir, "ca");
    make_ca(dir, "rogue-ca");
    make_leaf(
        dir,
        "ca",
        "server",
        "localhost",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    let client_ext =
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                      extendedKeyUsage=clientAuth\n";
    make_leaf(dir, "ca", "client", "rbd-row test client", client_ext);
    make_leaf(dir, "rogue-ca", "rogue", "rbd-row rogue client", client_ext);
    let copy = |from: &str, to: &Path| {
        std::fs::copy(dir.join(from), to).expect("copy pem");
    };
    let client_dir = dir.join("client");
    let anon_dir = dir.join("anon");
    let rogue_dir = dir.join("rogue");
    for d in [&client_dir, &anon_dir, &rogue_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
        copy("ca-cert.pem", &d.join("ca-cert.pem"));
    }
    copy("client-cert.pem", &client_dir.join("client-cert.pem"));
    copy("client-key.pem", &client_dir.join("client-key.pem"));
    // The rogue client trusts the server's CA and its own (so that qemu's
    // self-check of its certificate passes and the server is the one that
    // refuses it).
    let mut bundle = std::fs::read(dir.join("ca-cert.pem")).expect("read ca");
    bundle.extend(std::fs::read(dir.join("rogue-ca-cert.pem")).expect("read rogue ca"));
    std::fs::write(rogue_dir.join("ca-cert.pem"), bundle).expect("write bundle");
    copy("rogue-cert.pem", &rogue_dir.join("client-cert.pem"));
    copy("rogue-key.pem", &rogue_dir.join("client-key.pem"));
    Pki {
        ca_cert: dir.join("ca-cert.pem"),
        server_cert: dir.join("server-cert.pem"),
        server_key: dir.join("server-key.pem"),
        client_dir,
        anon_dir,
        rogue_dir,
    }
}

/// GET /metrics from `addr`; the body.
pub fn scrape(rt: &Runtime, addr: SocketAddr) -> String {
    rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .expect("send request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.expect("read response");
        assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .expect("body")
    })
}

/// The value of the series `name{labels}` (exact label text) in `body`.
pub fn series(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok())?
    })
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

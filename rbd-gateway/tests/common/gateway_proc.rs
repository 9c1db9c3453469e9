//! The real `rbd-gateway` binary as a child process, for the tests that
//! kill, stall or stop it (kill -9, pool quota, OSD failure, CLI end to
//! end): spawned on a free loopback port with its stderr in a log file,
//! killed on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a gateway may take to listen: opening an image fences a dead
/// owner first (its owner timeout), then finishes its interrupted work.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(120);

pub struct GatewayProc {
    pub child: Child,
    pub port: u16,
    log_file: PathBuf,
}

impl GatewayProc {
    /// `rbd-gateway <args> --listen 127.0.0.1:<free port>`, logging at
    /// `$ROW_GATEWAY_RUST_LOG` (default `info`) into `log_dir`; returns once
    /// it accepts connections, and panics with its log if it exits first.
    pub fn spawn(args: &[&str], log_dir: &Path) -> Self {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let log_file = log_dir.join(format!("gateway-{port}.log"));
        let err = std::fs::File::create(&log_file).expect("gateway log");
        let child = Command::new(env!("CARGO_BIN_EXE_rbd-gateway"))
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("RBD_ROW_STORE")
            .env(
                "RUST_LOG",
                std::env::var("ROW_GATEWAY_RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn rbd-gateway");
        let mut gw = GatewayProc {
            child,
            port,
            log_file,
        };
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(s) = gw.child.try_wait().expect("wait") {
                panic!("rbd-gateway exited early ({s}):\n{}", gw.log());
            }
            assert!(
                Instant::now() < deadline,
                "rbd-gateway did not listen:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        gw
    }

    /// A gateway on the cluster of `conf` exporting `image`.
    pub fn on_ceph(conf: &str, image: &str, log_dir: &Path) -> Self {
        Self::spawn(&["-c", conf, "--export", image], log_dir)
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn url(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub fn assert_alive(&mut self, when: &str) {
        if let Some(s) = self.child.try_wait().expect("wait") {
            panic!("rbd-gateway died {when} ({s}):\n{}", self.log());
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9 rbd-gateway");
        let _ = self.child.wait();
    }

    /// SIGTERM, then its exit status; `None` (and SIGKILL) if it has not
    /// exited within `limit`.
    pub fn terminate_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

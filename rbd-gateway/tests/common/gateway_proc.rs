//! The real `rbd-gateway` binary as a child process, for the tests that
//! kill, stall or stop it (kill -9, pool quota, OSD failure, CLI end to
//! end, the binary's own flags): spawned on loopback port 0 with its stderr
//! in a log file, killed on drop.
//!
//! The port comes from the gateway's own "serving NBD" log line, never from
//! probing a port picked in advance: a port freed by the test and bound
//! later can be taken by a parallel test's gateway in between, and a probe
//! then succeeds against the wrong process (CI saw exactly that).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a gateway may take to listen: opening an image fences a dead
/// owner first (its owner timeout), then finishes its interrupted work.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(120);

pub struct GatewayProc {
    pub child: Child,
    pub port: u16,
    /// The metrics address, when started with `--metrics 127.0.0.1:0`.
    pub metrics: Option<SocketAddr>,
    log_file: PathBuf,
}

impl GatewayProc {
    /// `rbd-gateway <args> --listen 127.0.0.1:0`, logging at
    /// `$ROW_GATEWAY_RUST_LOG` (default `info`; the gateway's own module
    /// always logs at info, for the bound addresses) into `log_dir`; returns
    /// once it listens, and panics with its log if it exits first.
    pub fn spawn(args: &[&str], log_dir: &Path) -> Self {
        let log_file = tempfile::Builder::new()
            .prefix("gateway-")
            .suffix(".log")
            .tempfile_in(log_dir)
            .expect("gateway log")
            .into_temp_path()
            .keep()
            .expect("keep gateway log");
        let err = std::fs::File::create(&log_file).expect("gateway log");
        let level = std::env::var("ROW_GATEWAY_RUST_LOG").unwrap_or_else(|_| "info".to_owned());
        let child = Command::new(env!("CARGO_BIN_EXE_rbd-gateway"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("RBD_ROW_STORE")
            .env("RUST_LOG", format!("{level},rbd_gateway::gateway=info"))
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn rbd-gateway");
        let mut gw = GatewayProc {
            child,
            port: 0,
            metrics: None,
            log_file,
        };
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        let nbd = loop {
            // "NBD limits" follows the address lines, all logged once bound.
            let log = gw.log();
            if log.contains("NBD limits") {
                gw.metrics = logged_addr(&log, "serving metrics");
                break logged_addr(&log, "serving NBD").expect("bound NBD address logged");
            }
            if let Some(s) = gw.child.try_wait().expect("wait") {
                panic!("rbd-gateway exited early ({s}):\n{}", gw.log());
            }
            assert!(
                Instant::now() < deadline,
                "rbd-gateway did not listen:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        gw.port = nbd.port();
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

/// The `addr=` of the first log line containing `message`.
fn logged_addr(log: &str, message: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains(message))?;
    let at = line.find("addr=")? + "addr=".len();
    line[at..].split_whitespace().next()?.parse().ok()
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

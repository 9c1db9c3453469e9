//! fio as the common client of every system measured: its rbd engine for
//! native RBD (real librbd) and for rbd-row's C ABI drop-in (the same engine
//! with `LD_LIBRARY_PATH` pointing at the drop-in), and its nbd engine for
//! rbd-row through `rbd-gateway`. One client for all of them means a
//! difference in the figures comes from the systems, not from the tools.

use anyhow::{anyhow, ensure, Context};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Where fio's I/O goes.
#[derive(Debug, Clone)]
pub enum FioTarget {
    /// fio's rbd engine on `pool/image`; `lib_dir` prepended to
    /// `LD_LIBRARY_PATH` loads a different `librbd.so.1` (the C ABI).
    Rbd {
        /// Pool.
        pool: String,
        /// Image.
        image: String,
        /// Directory holding the `librbd.so.1` to load instead of the system's.
        lib_dir: Option<PathBuf>,
        /// ceph.conf for librados (`CEPH_CONF`).
        conf: Option<PathBuf>,
    },
    /// fio's nbd engine on an NBD URI (`nbd://host:port/export`).
    Nbd {
        /// The URI.
        uri: String,
    },
}

/// How much I/O one run does.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    /// Run for this long.
    Time(Duration),
    /// Exactly this many I/Os.
    Ios(u64),
}

/// One fio job.
#[derive(Debug, Clone)]
pub struct FioJob {
    /// Target.
    pub target: FioTarget,
    /// `--rw` (randwrite, randread, read, write).
    pub rw: &'static str,
    /// Block size in bytes.
    pub bs: u64,
    /// I/Os in flight.
    pub iodepth: usize,
    /// Bytes of the device the I/O ranges over.
    pub size: u64,
    /// How much.
    pub amount: Amount,
    /// Random seed (same seed: same offsets).
    pub seed: u64,
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FioResult {
    /// Read IOPS.
    pub read_iops: f64,
    /// Write IOPS.
    pub write_iops: f64,
    /// Read bandwidth, bytes/s.
    pub read_bw: f64,
    /// Write bandwidth, bytes/s.
    pub write_bw: f64,
    /// Largest completion latency of any I/O, seconds.
    pub max_lat: f64,
}

impl FioResult {
    /// IOPS of the direction the job did (the larger of the two).
    pub fn iops(&self) -> f64 {
        self.read_iops.max(self.write_iops)
    }

    /// Bandwidth (bytes/s) of the direction the job did.
    pub fn bw(&self) -> f64 {
        self.read_bw.max(self.write_bw)
    }
}

impl FioJob {
    /// The command line.
    pub fn command(&self) -> Command {
        let mut c = Command::new("fio");
        c.args([
            "--name=bench",
            &format!("--rw={}", self.rw),
            &format!("--bs={}", self.bs),
            &format!("--iodepth={}", self.iodepth),
            &format!("--size={}", self.size),
            &format!("--randseed={}", self.seed),
            "--norandommap",
            "--output-format=json",
        ]);
        match self.amount {
            Amount::Time(d) => {
                c.args(["--time_based", &format!("--runtime={}ms", d.as_millis())]);
            }
            Amount::Ios(n) => {
                c.arg(format!("--number_ios={n}"));
            }
        }
        match &self.target {
            FioTarget::Rbd {
                pool,
                image,
                lib_dir,
                conf,
            } => {
                c.args([
                    "--ioengine=rbd",
                    "--clientname=admin",
                    &format!("--pool={pool}"),
                    &format!("--rbdname={image}"),
                ]);
                if let Some(conf) = conf {
                    c.env("CEPH_CONF", conf);
                }
                if let Some(dir) = lib_dir {
                    let old = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
                    let new = if old.is_empty() {
                        dir.display().to_string()
                    } else {
                        format!("{}:{old}", dir.display())
                    };
                    c.env("LD_LIBRARY_PATH", new);
                }
            }
            FioTarget::Nbd { uri } => {
                c.args(["--ioengine=nbd", &format!("--uri={uri}")]);
            }
        }
        c
    }

    /// How long it may run before it is killed: a timed job its runtime
    /// plus two minutes (start-up, connecting, a slow cluster), capped by
    /// the default deadline; a counted job the default deadline.
    pub fn timeout(&self) -> Duration {
        let d = crate::proc::default_timeout();
        match self.amount {
            Amount::Time(t) => {
                (t + Duration::from_secs(120)).min(d.max(t + Duration::from_secs(30)))
            }
            Amount::Ios(_) => d,
        }
    }

    /// Runs it (blocking); killed past [`FioJob::timeout`].
    pub fn run(&self) -> anyhow::Result<FioResult> {
        let out = crate::proc::output(&mut self.command(), self.timeout())
            .with_context(|| format!("fio {} on {:?}", self.rw, self.target))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "fio {} on {:?} failed: {}{}",
            self.rw,
            self.target,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.lines().last().unwrap_or("")
        );
        parse_json(&stdout)
    }
}

/// The figures of the first job of fio's JSON output (which may be preceded
/// by warnings on stdout).
pub fn parse_json(out: &str) -> anyhow::Result<FioResult> {
    let start = out
        .find('{')
        .ok_or_else(|| anyhow!("no JSON in fio output"))?;
    let v: serde_json::Value = serde_json::from_str(&out[start..]).context("fio JSON")?;
    let job = &v["jobs"][0];
    ensure!(job.is_object(), "fio JSON has no job");
    let err = job["error"].as_i64().unwrap_or(0);
    ensure!(err == 0, "fio job error {err}");
    let f = |dir: &str, key: &str| job[dir][key].as_f64().unwrap_or(0.0);
    let lat = |dir: &str| job[dir]["clat_ns"]["max"].as_f64().unwrap_or(0.0) / 1e9;
    Ok(FioResult {
        read_iops: f("read", "iops"),
        write_iops: f("write", "iops"),
        read_bw: f("read", "bw") * 1024.0,
        write_bw: f("write", "bw") * 1024.0,
        max_lat: lat("read").max(lat("write")),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fio_json() {
        let out = r#"note: both iodepth >= 1 and synchronous I/O engine
{"fio version":"fio-3.33","jobs":[{"jobname":"bench","error":0,
 "read":{"iops":0.0,"bw":0,"clat_ns":{"max":0}},
 "write":{"iops":1234.5,"bw":4938,"clat_ns":{"max":25000000}}}]}"#;
        let r = super::parse_json(out).expect("parses");
        assert_eq!(r.write_iops, 1234.5);
        assert_eq!(r.iops(), 1234.5);
        assert_eq!(r.write_bw, 4938.0 * 1024.0);
        assert_eq!(r.max_lat, 0.025);
        assert!(super::parse_json("no json").is_err());
        assert!(super::parse_json(r#"{"jobs":[{"error":5}]}"#).is_err());
    }
}

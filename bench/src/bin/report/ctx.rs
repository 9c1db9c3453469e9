//! What every step of the report shares: the parameters of the run (quick
//! or full), the cluster connection, the derived no-cache ceph.conf, the
//! binaries and the C ABI library the steps need (or why they are missing),
//! and the alternating measurement loop.

use anyhow::Context;
use rbd_row_bench::ceph;
use rbd_row_bench::fio::{FioJob, FioResult, FioTarget};
use rbd_row_bench::results::{Cell, Report};
use rbd_row_cli::store_select::Stores;
use row_layer::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Sizes and counts of one run.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) quick: bool,
    pub(crate) repeats: usize,
    pub(crate) runtime: Duration,
    pub(crate) depth: usize,
    pub(crate) size: u64,
    pub(crate) steps: Vec<u32>,
    pub(crate) churn: u64,
    pub(crate) rounds: u32,
    pub(crate) round_writes: u64,
    pub(crate) keep: u32,
    pub(crate) frag_snaps: u32,
    pub(crate) frag_writes: u64,
    pub(crate) diff_changed: u64,
    pub(crate) diff_sizes: Vec<u64>,
    pub(crate) rollback_sizes: Vec<u64>,
    pub(crate) open_snaps: Vec<u32>,
    pub(crate) native_open_snaps: u32,
    pub(crate) rss_grains: u64,
    pub(crate) load_snaps: u32,
    pub(crate) reclaim_window: Duration,
    /// Deadline of one external command (fio, rbd, ceph, rbd-row).
    pub(crate) cmd_timeout: Duration,
    /// Deadline of one whole row (in-process work included).
    pub(crate) row_timeout: Duration,
    /// Longest wait for the cluster to give space back between rows.
    pub(crate) settle_timeout: Duration,
    /// How long the raw usage must stop falling to count as settled.
    pub(crate) settle_quiet: Duration,
    /// Re-run a row that missed its target under `perf record`.
    pub(crate) profile_missed: bool,
    /// Seconds of each such profile.
    pub(crate) profile_secs: Duration,
}

const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

impl Params {
    pub(crate) fn new(quick: bool) -> Params {
        if quick {
            // CI's smoke run, under 5 minutes: every row type, few and
            // short steps, one repeat per measurement (so no min–max).
            Params {
                quick,
                repeats: 1,
                runtime: Duration::from_secs(1),
                depth: 16,
                size: 256 << 20,
                steps: vec![0, 8],
                churn: 256,
                rounds: 6,
                round_writes: 500,
                keep: 5,
                frag_snaps: 6,
                frag_writes: 512,
                diff_changed: 500,
                diff_sizes: vec![GIB, 16 * GIB],
                rollback_sizes: vec![GIB, 16 * GIB],
                open_snaps: vec![1, 50],
                native_open_snaps: 8,
                rss_grains: 10_000,
                load_snaps: 4,
                reclaim_window: Duration::from_secs(6),
                cmd_timeout: Duration::from_secs(120),
                row_timeout: Duration::from_secs(240),
                settle_timeout: Duration::from_secs(30),
                settle_quiet: Duration::ZERO,
                profile_missed: false,
                profile_secs: Duration::from_secs(3),
            }
        } else {
            Params {
                quick,
                repeats: 3,
                runtime: Duration::from_secs(4),
                depth: 16,
                size: GIB,
                steps: vec![0, 1, 4, 16, 64, 256, 1000],
                churn: 256,
                rounds: 200,
                round_writes: 2000,
                keep: 5,
                frag_snaps: 256,
                frag_writes: 2048,
                diff_changed: 10_000,
                diff_sizes: vec![GIB, 64 * GIB, TIB],
                rollback_sizes: vec![GIB, 64 * GIB, TIB],
                open_snaps: vec![1, 100, 1000, 10_000],
                native_open_snaps: 200,
                rss_grains: 250_000,
                load_snaps: 10,
                reclaim_window: Duration::from_secs(30),
                cmd_timeout: Duration::from_secs(1800),
                row_timeout: Duration::from_secs(6 * 3600),
                settle_timeout: Duration::from_secs(900),
                settle_quiet: Duration::from_secs(12),
                profile_missed: true,
                profile_secs: Duration::from_secs(5),
            }
        }
    }
}

/// The binaries the metadata steps run as processes.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    pub(crate) rbd_row: PathBuf,
    pub(crate) gateway: PathBuf,
}

/// Shared state of a run.
pub(crate) struct Ctx {
    pub(crate) p: Params,
    pub(crate) pool: String,
    pub(crate) stores: Arc<Stores>,
    pub(crate) store: Store,
    /// ceph.conf with librbd's cache off (for fio's rbd engine and `rbd`).
    pub(crate) conf: PathBuf,
    /// Directory holding `librbd.so.1` of the C ABI, or why there is none.
    pub(crate) cabi: Result<PathBuf, String>,
    pub(crate) bins: Result<Bins, String>,
    /// Unique suffix of this run's image names.
    pub(crate) tag: String,
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) report: Report,
    /// RADOS ceiling (4 KiB writes/s) of row 1.
    pub(crate) ceiling: Option<Cell>,
    /// The pools' usage at the start of each row.
    pub(crate) pool_log: Vec<crate::settle::PoolUse>,
}

impl Ctx {
    /// A name unique to this run.
    pub(crate) fn name(&self, what: &str) -> String {
        format!("rr-{what}-{}", self.tag)
    }

    /// `pool/name`.
    pub(crate) fn spec(&self, name: &str) -> String {
        format!("{}/{name}", self.pool)
    }

    /// fio on a native image through the system's librbd.
    pub(crate) fn native_target(&self, image: &str) -> FioTarget {
        FioTarget::Rbd {
            pool: self.pool.clone(),
            image: image.to_owned(),
            lib_dir: None,
            conf: Some(self.conf.clone()),
        }
    }

    /// fio on an rbd-row image through the C ABI, if it was built.
    pub(crate) fn cabi_target(&self, image: &str) -> Result<FioTarget, String> {
        let dir = self.cabi.clone()?;
        Ok(FioTarget::Rbd {
            pool: self.pool.clone(),
            image: image.to_owned(),
            lib_dir: Some(dir),
            conf: Some(self.conf.clone()),
        })
    }

    /// A fio job of this run's block size 4 KiB, depth and duration.
    pub(crate) fn job(&self, target: FioTarget, rw: &'static str, size: u64) -> FioJob {
        FioJob {
            target,
            rw,
            bs: 4096,
            iodepth: self.p.depth,
            size,
            amount: rbd_row_bench::fio::Amount::Time(self.p.runtime),
            seed: 1,
        }
    }

    /// `rbd` with the no-cache conf.
    pub(crate) fn rbd(&self, args: &[&str]) -> anyhow::Result<String> {
        let conf = self.conf.display().to_string();
        let mut a = vec!["-c", conf.as_str()];
        a.extend_from_slice(args);
        ceph::rbd(&a)
    }
}

/// One measurement of one system: runs blocking (a process), given the
/// repeat's seed, and returns the figure.
pub(crate) type Probe = Arc<dyn Fn(u64) -> anyhow::Result<f64> + Send + Sync>;

/// A probe of a fio job's `metric`.
pub(crate) fn fio_probe(
    job: Result<FioJob, String>,
    metric: fn(&FioResult) -> f64,
) -> Result<Probe, String> {
    let job = job?;
    Ok(Arc::new(move |seed| {
        let mut j = job.clone();
        j.seed = seed;
        Ok(metric(&j.run()?))
    }))
}

/// IOPS of a fio run.
pub(crate) fn iops(r: &FioResult) -> f64 {
    r.iops()
}

/// Bandwidth of a fio run in MiB/s.
pub(crate) fn mib_s(r: &FioResult) -> f64 {
    r.bw() / f64::from(1u32 << 20)
}

/// Runs the probes `repeats` times, the systems alternating within each
/// repeat (the order rotated from one repeat to the next, so drift and
/// warm-up hit every system alike), and summarises each system. A probe
/// that fails is not retried; its cell carries the error.
pub(crate) async fn alternate(probes: Vec<Result<Probe, String>>, repeats: usize) -> Vec<Cell> {
    let n = probes.len();
    let mut samples: Vec<Result<Vec<f64>, String>> = probes
        .iter()
        .map(|j| j.as_ref().map(|_| Vec::new()).map_err(Clone::clone))
        .collect();
    for rep in 0..repeats {
        for k in 0..n {
            let i = (k + rep) % n;
            let (Ok(probe), Ok(_)) = (&probes[i], &samples[i]) else {
                continue;
            };
            let probe = probe.clone();
            let seed = 1000 + rep as u64;
            let r = tokio::task::spawn_blocking(move || probe(seed)).await;
            match r {
                Ok(Ok(x)) => {
                    if let Ok(v) = &mut samples[i] {
                        v.push(x);
                    }
                }
                Ok(Err(e)) => samples[i] = Err(first_line(&format!("{e:#}"))),
                Err(e) => samples[i] = Err(e.to_string()),
            }
        }
    }
    samples
        .into_iter()
        .map(|s| match s {
            Ok(v) => Cell::from_samples(&v),
            Err(e) => Cell::NotRun(e),
        })
        .collect()
}

/// The first line of an error, shortened for a table cell.
pub(crate) fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("").replace('|', "/");
    if l.chars().count() > 160 {
        format!("{}…", l.chars().take(160).collect::<String>())
    } else {
        l
    }
}

/// Where the C ABI drop-in is: `target/<profile>/` next to this binary
/// holds the cdylib of `rbd-gateway/librbd`; a directory with a
/// `librbd.so.1` link to it is what `LD_LIBRARY_PATH` needs.
pub(crate) fn find_cabi(exe_dir: &Path, tmp: &Path) -> Result<PathBuf, String> {
    let names = ["librbd.so.1", "librbd.so", "liblibrbd.so", "librbd_row.so"];
    let found = names
        .iter()
        .map(|n| exe_dir.join(n))
        .find(|p| p.exists())
        .ok_or_else(|| {
            format!(
                "C ABI library not built (no {} in {})",
                names.join(" / "),
                exe_dir.display()
            )
        })?;
    if found.file_name().is_some_and(|n| n == "librbd.so.1") {
        return Ok(exe_dir.to_path_buf());
    }
    let dir = tmp.join("cabi");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(&found, dir.join("librbd.so.1")).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// Builds (or finds fresh) `rbd-row` and `rbd-gateway` in this binary's
/// profile directory: under `cargo run`, `$CARGO` builds them first, with
/// the profile of `target/<dir>` (`release`, else `$RBD_ROW_BENCH_PROFILE`
/// or `dev` for `target/debug`, which `--profile test` shares).
pub(crate) fn find_bins(exe_dir: &Path) -> Result<Bins, String> {
    if let Ok(cargo) = std::env::var("CARGO") {
        let dir = exe_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("release");
        let profile = match dir {
            "debug" => std::env::var("RBD_ROW_BENCH_PROFILE").unwrap_or_else(|_| "dev".into()),
            other => other.to_owned(),
        };
        let st = std::process::Command::new(cargo)
            .args([
                "build",
                "--profile",
                &profile,
                // The package set of `cargo run -p rbd-row-bench`, so that
                // features unify alike and nothing is rebuilt for them.
                "-p",
                "rbd-row-bench",
                "-p",
                "rbd-row-cli",
                "-p",
                "rbd-gateway",
                "--bin",
                "rbd-row",
                "--bin",
                "rbd-gateway",
            ])
            .status()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if !st.success() {
            return Err("cargo build of rbd-row and rbd-gateway failed".into());
        }
    }
    let b = Bins {
        rbd_row: exe_dir.join("rbd-row"),
        gateway: exe_dir.join("rbd-gateway"),
    };
    for p in [&b.rbd_row, &b.gateway] {
        if !p.exists() {
            return Err(format!(
                "{} not built (cargo build --release -p rbd-row-cli -p rbd-gateway)",
                p.display()
            ));
        }
    }
    Ok(b)
}

/// A ceph.conf path for the report (CEPH_CONF).
pub(crate) fn ceph_conf() -> anyhow::Result<PathBuf> {
    std::env::var_os("CEPH_CONF")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/etc/ceph/ceph.conf")).filter(|p| p.exists()))
        .context("no ceph.conf: start tests/ceph/cluster.sh and eval its env")
}

/// Removes an rbd-row image with all its snapshots (cleanup; the error is
/// returned so the caller can report a leak).
pub(crate) use rbd_row_bench::remove_row_image;

/// Seconds since the report started, for progress lines.
pub(crate) fn since_start() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

/// A progress line on stderr, with the seconds since the start.
#[macro_export]
macro_rules! progress {
    ($($t:tt)*) => {
        eprintln!("report [{:>5.0} s]: {}", $crate::ctx::since_start(), format!($($t)*))
    };
}

/// Where this run's counts fall short of issue 12's, and what the issue
/// asks that this test cluster cannot hold, for the report's header.
pub(crate) fn counts_note(p: &Params) -> String {
    let mut short = Vec::new();
    let issue_steps = [0, 1, 4, 16, 64, 256, 1000];
    if p.steps != issue_steps {
        short.push(format!(
            "snapshot counts {:?} (issue: {issue_steps:?})",
            p.steps
        ));
    }
    if p.rounds < 200 {
        short.push(format!("{} rolling rounds (issue: at least 200)", p.rounds));
    }
    if p.frag_snaps < 256 {
        short.push(format!(
            "fragmentation after {} snapshots (issue: 256)",
            p.frag_snaps
        ));
    }
    if p.size != GIB {
        short.push(format!("{} MiB images (issue: 1 GiB)", p.size >> 20));
    }
    if !p.diff_sizes.contains(&TIB) || p.diff_changed != 10_000 {
        short.push(format!(
            "diff of {} changed blocks on {} GiB images (issue: 10,000 on 1 TiB)",
            p.diff_changed,
            p.diff_sizes.iter().max().copied().unwrap_or(0) >> 30
        ));
    }
    for (need, what) in [(64 * GIB, "64 GiB"), (TIB, "1 TiB")] {
        if !p.rollback_sizes.contains(&need) {
            short.push(format!("no {what} rollback"));
        }
    }
    if p.open_snaps.iter().max().copied().unwrap_or(0) < 10_000 {
        short.push(format!(
            "open with at most {} snapshots (issue: 10,000)",
            p.open_snaps.iter().max().copied().unwrap_or(0)
        ));
    }
    let counts = if short.is_empty() {
        "the issue's counts".to_owned()
    } else {
        format!("short of the issue's: {}", short.join("; "))
    };
    format!(
        "{counts}. Gateway memory: the growth over {} random 4 KiB grains ({} MiB) on a 1 TiB thin image, scaled to a TiB written; \
         issue 9's 1%-written (10 GiB, 2.7 M grains, about 25 min of writes here) and 100%-written 1 TiB images are not written: \
         a full 1 TiB cannot be stored on the test cluster (one OSD on a sparse file; 24 GiB is what the full run asks of the build machine's disk)",
        p.rss_grains,
        (p.rss_grains * 4096) >> 20
    )
}

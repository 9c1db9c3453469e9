//! fio's rbd engine through the librbd drop-in (issue 8): ROW images via
//! `rbd-gateway/librbd`'s `librbd.so.1` against native images via the
//! system librbd, `rbd_cache=false` on both, side by side in one run
//! (each round rotates which system goes first), next to a ROW control
//! image that gets the same writes and no snapshots:
//!
//! * 4 KiB random writes, iodepth 16, at 0 snapshots (target >= 0.9x);
//! * the same at 64 snapshots, each snapshot followed by `--churn` random
//!   writes on every image (the control's without a snapshot), so native
//!   RBD has clones to make and ROW epochs to resolve through, as in the
//!   report's snapshot-scaling row (target >= 2x);
//! * 4 KiB random reads, iodepth 16, at 0 snapshots (target >= 0.9x).
//!
//! Writes the table to `bench/results/librbd-fio.md` (`record`).
//!
//! ```sh
//! tests/ceph/cluster.sh start && eval "$(tests/ceph/cluster.sh env)"
//! cargo build --release -p rbd-row-librbd
//! cargo build --release -p rbd-row-bench --bin librbd-fio
//! target/release/librbd-fio --runtime 10 --rounds 3
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use rbd_row_bench::results::{Cell, Report, Row, Target};
use row_layer::{CreateOptions, Store};
use row_rados::{ClusterConfig, RadosCluster};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

#[derive(Parser)]
struct Args {
    /// Image size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Pool to use.
    #[arg(long, default_value = "rbd")]
    pool: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 20)]
    runtime: u64,
    /// Measurements per system and workload (rotating order).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Snapshots for the second write measurement.
    #[arg(long, default_value_t = 64)]
    snapshots: u32,
    /// Random 4 KiB writes after each snapshot.
    #[arg(long, default_value_t = 400)]
    churn: u64,
    /// The drop-in (default: librbd.so next to this executable).
    #[arg(long)]
    lib: Option<PathBuf>,
    /// Do not write bench/results/librbd-fio.md.
    #[arg(long)]
    no_record: bool,
}

/// One system under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Native,
    Row,
    /// The ROW image with the same writes and no snapshots.
    Control,
}

const SYSTEMS: [System; 3] = [System::Native, System::Row, System::Control];

struct Bench {
    args: Args,
    conf: PathBuf,
    libdir: tempfile::TempDir,
    native: String,
    row: String,
    control: String,
}

impl Bench {
    fn image(&self, s: System) -> &str {
        match s {
            System::Native => &self.native,
            System::Row => &self.row,
            System::Control => &self.control,
        }
    }

    /// Runs fio's rbd engine on `s`'s image; its IOPS.
    fn fio(&self, s: System, rw: &str, extra: &[String]) -> anyhow::Result<f64> {
        let mut cmd = Command::new("fio");
        cmd.args([
            "--name=librbd-fio",
            "--ioengine=rbd",
            "--clientname=admin",
            &format!("--pool={}", self.args.pool),
            &format!("--rbdname={}", self.image(s)),
            &format!("--rw={rw}"),
            "--bs=4k",
            "--iodepth=16",
            "--norandommap",
            "--output-format=json",
            &format!("--size={}M", self.args.size_mib),
        ])
        .args(extra)
        .env("CEPH_CONF", &self.conf)
        .env_remove("LD_LIBRARY_PATH");
        if s != System::Native {
            cmd.env("LD_LIBRARY_PATH", self.libdir.path());
        }
        let out = cmd.output().context("running fio")?;
        if !out.status.success() {
            bail!(
                "fio on {s:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let start = text.find('{').context("no JSON from fio")?;
        let v: serde_json::Value = serde_json::from_str(&text[start..]).context("fio JSON")?;
        let job = &v["jobs"][0];
        let dir = if rw.contains("read") { "read" } else { "write" };
        job[dir]["iops"].as_f64().context("no iops in fio output")
    }

    fn timed(&self, s: System, rw: &str) -> anyhow::Result<f64> {
        let extra = [
            "--time_based".to_string(),
            format!("--runtime={}", self.args.runtime),
            "--ramp_time=2".to_string(),
        ];
        self.fio(s, rw, &extra)
    }

    /// IOPS of every system over the rounds; round `k` starts with system
    /// `k mod 3`, so no system always runs first or last.
    fn measure(&self, rw: &str) -> anyhow::Result<Sample> {
        let mut iops = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..self.args.rounds {
            for i in 0..SYSTEMS.len() {
                let k = (i + round as usize) % SYSTEMS.len();
                let v = self.timed(SYSTEMS[k], rw)?;
                eprintln!("  {rw} {:?} round {round}: {v:.0} IOPS", SYSTEMS[k]);
                iops[k].push(v);
            }
        }
        let [native, row, control] = iops;
        Ok(Sample {
            native,
            row,
            control,
        })
    }
}

/// One workload's IOPS per round, in round order.
struct Sample {
    native: Vec<f64>,
    row: Vec<f64>,
    control: Vec<f64>,
}

impl Sample {
    /// The lowest and highest ratio of one round's ROW run to the same
    /// round's native run.
    fn round_ratios(&self) -> (f64, f64) {
        let per = self.row.iter().zip(&self.native).map(|(r, n)| r / n);
        per.fold((f64::INFINITY, 0.0), |(lo, hi), x| (lo.min(x), hi.max(x)))
    }
}

fn rbd(args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new("rbd")
        .args(args)
        .output()
        .context("running rbd")?;
    if !o.status.success() {
        bail!("rbd {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// A copy of `$CEPH_CONF` with librbd's cache off.
fn conf_without_cache(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = std::env::var("CEPH_CONF").context("CEPH_CONF (start tests/ceph/cluster.sh)")?;
    let mut text = std::fs::read_to_string(&src).with_context(|| format!("reading {src}"))?;
    text.push_str("\n[client]\n\trbd cache = false\n");
    let out = dir.join("ceph.conf");
    std::fs::write(&out, text)?;
    Ok(out)
}

fn lib_path(lib: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let so = match lib {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("librbd.so"),
    };
    if !so.exists() {
        bail!(
            "{} not found: cargo build --release -p rbd-row-librbd",
            so.display()
        );
    }
    Ok(so.canonicalize()?)
}

fn lib_dir(so: &Path) -> anyhow::Result<tempfile::TempDir> {
    let d = tempfile::tempdir()?;
    std::os::unix::fs::symlink(so, d.path().join("librbd.so.1"))?;
    Ok(d)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.rounds > 0, "--rounds must be positive");
    let work = tempfile::tempdir()?;
    let conf = conf_without_cache(work.path())?;
    let so = lib_path(args.lib.clone())?;
    let libdir = lib_dir(&so)?;
    let tag = std::process::id();
    let cluster = RadosCluster::connect(ClusterConfig {
        conf_path: Some(conf.clone()),
        ..ClusterConfig::default()
    })
    .await?;
    let store = Store::new(Arc::new(cluster.open_pool(&args.pool, "").await?));
    let b = Bench {
        native: format!("librbd-fio-nat-{tag}"),
        row: format!("librbd-fio-row-{tag}"),
        control: format!("librbd-fio-ctl-{tag}"),
        args,
        conf,
        libdir,
    };
    let size = b.args.size_mib << 20;
    for n in [&b.row, &b.control] {
        store.create(n, CreateOptions::with_size(size)).await?;
    }
    rbd(&[
        "create",
        "--size",
        &format!("{}M", b.args.size_mib),
        &format!("{}/{}", b.args.pool, b.native),
    ])?;
    let result = run(&b, &store).await;
    let recorded = match &result {
        Ok(report) => record(&b, &so, report),
        Err(_) => Ok(()),
    };
    cleanup(&b, &store).await;
    result?;
    recorded
}

/// Prints the table and writes the record (before the cleanup, which
/// removes 64 snapshots of each image and may take minutes).
fn record(b: &Bench, so: &Path, report: &Report) -> anyhow::Result<()> {
    let title = format!(
        "librbd-fio: fio's rbd engine on ROW images through the drop-in, {} MiB images",
        b.args.size_mib
    );
    print!("{}", report.markdown(&title));
    if !b.args.no_record {
        let mut report = report.clone();
        report
            .about
            .insert(0, ("Drop-in".into(), format!("`{}`", so.display())));
        let path = rbd_row_bench::record::write("librbd-fio", &title, true, &report)?;
        eprintln!("record written to {}", path.display());
    }
    Ok(())
}

/// Removes the three images whatever happened.
async fn cleanup(b: &Bench, store: &Store) {
    let _ = rbd(&["snap", "purge", &format!("{}/{}", b.args.pool, b.native)]);
    let _ = rbd(&[
        "rm",
        "--no-progress",
        &format!("{}/{}", b.args.pool, b.native),
    ]);
    for n in [&b.row, &b.control] {
        if let Ok(img) = store.open(n).await {
            for s in img.snap_list() {
                let _ = img.snap_remove(&s.name).await;
            }
            let _ = img.close().await;
        }
        let _ = store.remove(n).await;
    }
}

/// `snapshots` snapshots of the native and ROW images, each followed by
/// `churn` random 4 KiB writes on all three images (fio on the native one,
/// the engine in this process on the ROW ones: the same engine state the
/// drop-in would leave).
async fn take_snapshots(b: &Bench, store: &Store) -> anyhow::Result<()> {
    let churn = [format!("--number_ios={}", b.args.churn)];
    let (row, ctl) = (store.open(&b.row).await?, store.open(&b.control).await?);
    for i in 0..b.args.snapshots {
        let seed = 100 + u64::from(i);
        rbd(&[
            "snap",
            "create",
            &format!("{}/{}@s{i}", b.args.pool, b.native),
        ])?;
        b.fio(System::Native, "randwrite", &churn)?;
        row.snap_create(&format!("s{i}")).await?;
        for img in [&row, &ctl] {
            rbd_row_bench::random_writes(img, 4096, b.args.churn, 16, seed).await?;
            img.flush().await?;
        }
    }
    row.close().await?;
    ctl.close().await?;
    Ok(())
}

async fn run(b: &Bench, store: &Store) -> anyhow::Result<Report> {
    eprintln!("filling the images");
    for s in SYSTEMS {
        b.fio(s, "write", &["--bs=4M".into(), "--iodepth=4".into()])?;
    }
    eprintln!("0 snapshots");
    let w0 = b.measure("randwrite")?;
    let r0 = b.measure("randread")?;
    eprintln!(
        "taking {} snapshots with {} writes after each",
        b.args.snapshots, b.args.churn
    );
    take_snapshots(b, store).await?;
    let wn = b.measure("randwrite")?;
    Ok(report(
        b,
        [
            ("random writes, 0 snapshots", w0, 0.9),
            (
                &format!("random writes, {} snapshots", b.args.snapshots),
                wn,
                2.0,
            ),
            ("random reads, 0 snapshots", r0, 0.9),
        ],
    ))
}

const GROUP: &str = "fio rbd engine, 4 KiB random I/O, iodepth 16 (issue 8)";

/// The record: one row per target, and the per-round IOPS.
fn report(b: &Bench, rows: [(&str, Sample, f64); 3]) -> Report {
    let mut r = Report::default();
    let a = &b.args;
    r.about.extend([
        ("Images".into(), format!("{} MiB, filled first; native with `rbd_cache=false`", a.size_mib)),
        ("Runs".into(), format!(
            "{} rounds of {} s (+2 s ramp) per system and workload; round k starts with system k mod 3 (native, ROW, control)",
            a.rounds, a.runtime
        )),
        ("Snapshots".into(), format!(
            "{} on native and ROW, each followed by {} random 4 KiB writes on native, ROW and the control (no snapshot)",
            a.snapshots, a.churn
        )),
        ("Runtime workers".into(), std::env::var("RBD_ROW_THREADS").unwrap_or_else(|_| "default".into())),
    ]);
    let mut rounds = String::from(
        "| measurement | round | native IOPS | ROW IOPS | control IOPS | ROW / native |\n|---|---|---|---|---|---|\n",
    );
    for (name, s, bound) in rows {
        let (lo, hi) = s.round_ratios();
        let text = format!("≥ {bound}× native (round ratios {lo:.2}–{hi:.2})");
        r.rows.push(
            Row::new(GROUP, name, "IOPS", Cell::from_samples(&s.row))
                .native(Cell::from_samples(&s.native))
                .control(Cell::from_samples(&s.control))
                .target(Target::vs_native(&text, true, bound)),
        );
        for (i, ((n, w), c)) in s.native.iter().zip(&s.row).zip(&s.control).enumerate() {
            let _ = writeln!(
                rounds,
                "| {name} | {i} | {n:.0} | {w:.0} | {c:.0} | {:.2} |",
                w / n
            );
        }
    }
    r.sections.push(("Per round".into(), rounds));
    r
}

//! fio's rbd engine through the librbd drop-in (issue 8): ROW images via
//! `rbd-gateway/librbd`'s `librbd.so.1` against native images via the
//! system librbd, `rbd_cache=false` on both, side by side in one run
//! (rounds alternate which system goes first).
//!
//! * 4 KiB random writes, iodepth 16, at 0 snapshots (target >= 0.9x);
//! * the same at 64 snapshots, each snapshot followed by `--churn` random
//!   writes so native RBD has clones to make (target >= 2x);
//! * 4 KiB random reads, iodepth 16, at 0 snapshots (target >= 0.9x).
//!
//! ```sh
//! tests/ceph/cluster.sh start && eval "$(tests/ceph/cluster.sh env)"
//! cargo build --release -p rbd-row-librbd
//! cargo run --release -p rbd-row-bench --bin librbd-fio -- --size-mib 1024
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use row_layer::{CreateOptions, Store};
use row_rados::{ClusterConfig, RadosCluster};
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
    /// Measurements per system and workload (alternating order).
    #[arg(long, default_value_t = 2)]
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
}

/// One system under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Native,
    Row,
}

struct Bench {
    args: Args,
    conf: PathBuf,
    libdir: tempfile::TempDir,
    native: String,
    row: String,
}

impl Bench {
    fn image(&self, s: System) -> &str {
        match s {
            System::Native => &self.native,
            System::Row => &self.row,
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
        if s == System::Row {
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

    /// IOPS of both systems over the rounds, alternating order.
    fn measure(&self, rw: &str) -> anyhow::Result<Sample> {
        let (mut n, mut r) = (Vec::new(), Vec::new());
        for round in 0..self.args.rounds {
            let order = if round % 2 == 0 {
                [System::Native, System::Row]
            } else {
                [System::Row, System::Native]
            };
            for s in order {
                let iops = self.timed(s, rw)?;
                eprintln!("  {rw} {s:?} round {round}: {iops:.0} IOPS");
                match s {
                    System::Native => n.push(iops),
                    System::Row => r.push(iops),
                }
            }
        }
        Ok(Sample { native: n, row: r })
    }
}

/// One workload's IOPS per round, in round order.
struct Sample {
    native: Vec<f64>,
    row: Vec<f64>,
}

impl Sample {
    /// Ratio of the medians, and the lowest and highest ratio of one
    /// round's ROW run to the same round's native run.
    fn ratios(&self) -> (f64, f64, f64) {
        let per: Vec<f64> = self
            .row
            .iter()
            .zip(&self.native)
            .map(|(r, n)| r / n)
            .collect();
        let lo = per.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = per.iter().copied().fold(0.0, f64::max);
        (median(&self.row) / median(&self.native), lo, hi)
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// "median (min-max)" of IOPS.
fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{:.0} ({lo:.0}-{hi:.0})", median(v))
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

fn lib_dir(lib: Option<PathBuf>) -> anyhow::Result<tempfile::TempDir> {
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
    let d = tempfile::tempdir()?;
    std::os::unix::fs::symlink(so.canonicalize()?, d.path().join("librbd.so.1"))?;
    Ok(d)
}

fn verdict(ratio: f64, target: f64) -> &'static str {
    if ratio >= target {
        "met"
    } else {
        "MISSED"
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let conf = conf_without_cache(work.path())?;
    let libdir = lib_dir(args.lib.clone())?;
    let tag = std::process::id();
    let (native, row) = (
        format!("librbd-fio-nat-{tag}"),
        format!("librbd-fio-row-{tag}"),
    );
    let cluster = RadosCluster::connect(ClusterConfig {
        conf_path: Some(conf.clone()),
        ..ClusterConfig::default()
    })
    .await?;
    let store = Store::new(Arc::new(cluster.open_pool(&args.pool, "").await?));
    let size = args.size_mib << 20;
    store.create(&row, CreateOptions::with_size(size)).await?;
    rbd(&[
        "create",
        "--size",
        &format!("{}M", args.size_mib),
        &format!("{}/{native}", args.pool),
    ])?;
    let b = Bench {
        args,
        conf,
        libdir,
        native,
        row,
    };
    let result = run(&b, &store).await;
    // Clean up both images whatever happened.
    let _ = rbd(&["snap", "purge", &format!("{}/{}", b.args.pool, b.native)]);
    let _ = rbd(&[
        "rm",
        "--no-progress",
        &format!("{}/{}", b.args.pool, b.native),
    ]);
    if let Ok(img) = store.open(&b.row).await {
        for s in img.snap_list() {
            let _ = img.snap_remove(&s.name).await;
        }
        let _ = img.close().await;
    }
    let _ = store.remove(&b.row).await;
    result
}

async fn run(b: &Bench, store: &Store) -> anyhow::Result<()> {
    eprintln!("filling both images");
    for s in [System::Native, System::Row] {
        b.fio(s, "write", &["--bs=4M".into(), "--iodepth=4".into()])?;
    }
    eprintln!("0 snapshots");
    let w0 = b.measure("randwrite")?;
    let r0 = b.measure("randread")?;
    eprintln!(
        "taking {} snapshots with {} writes after each",
        b.args.snapshots, b.args.churn
    );
    let churn = [format!("--number_ios={}", b.args.churn)];
    for i in 0..b.args.snapshots {
        rbd(&[
            "snap",
            "create",
            &format!("{}/{}@s{i}", b.args.pool, b.native),
        ])?;
        let img = store.open(&b.row).await?;
        img.snap_create(&format!("s{i}")).await?;
        img.close().await?;
        for s in [System::Native, System::Row] {
            b.fio(s, "randwrite", &churn)?;
        }
    }
    let w64 = b.measure("randwrite")?;
    println!("fio rbd engine, 4 KiB, iodepth 16, rbd_cache=false, {} MiB images, {} s x {} rounds (median; ratio = ROW median / native median)", b.args.size_mib, b.args.runtime, b.args.rounds);
    println!("workload   snapshots  native_iops (min-max)  row_iops (min-max)  ratio  round ratios  target  verdict");
    for (name, snaps, s, target) in [
        ("randwrite", 0, w0, 0.9),
        ("randwrite", b.args.snapshots, w64, 2.0),
        ("randread", 0, r0, 0.9),
    ] {
        let (ratio, lo, hi) = s.ratios();
        println!(
            "{name:<10} {snaps:>9}  {:>21}  {:>18}  {ratio:>5.2}  {lo:>5.2}-{hi:<5.2}  {target:>5.1}x  {}",
            spread(&s.native),
            spread(&s.row),
            verdict(ratio, target)
        );
    }
    Ok(())
}

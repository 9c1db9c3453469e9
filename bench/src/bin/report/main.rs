//! The benchmark report (issue 12): one command runs every side-by-side
//! measurement on the test cluster and writes `bench/RESULTS.md` with the
//! PNG plots next to it.
//!
//! ```sh
//! tests/ceph/cluster.sh start && eval "$(tests/ceph/cluster.sh env)"
//! cargo run --release -p rbd-row-bench --bin report -- [--quick] [--out DIR]
//! ```
//! Each row gives the median with min and max over repeats, the ratios
//! rbd-row/native, rbd-row/control and rbd-row/ceiling, and the target of
//! issues 8 and 9 with its verdict. Systems alternate within each step. A
//! row whose prerequisite is missing (the C ABI library not built, say)
//! says "not run" and why.

mod ceiling;
mod ctx;
mod diffs;
mod frag;
mod meta;
mod rolling;
mod scaling;

use anyhow::Context;
use clap::Parser;
use ctx::{Ctx, Params};
use rbd_row_bench::plot::{line_chart, Chart};
use rbd_row_bench::results::{Report, Row};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Small counts and short runs (under 5 minutes): what CI runs.
    #[arg(long)]
    quick: bool,
    /// Directory for RESULTS.md and results/*.png.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR")))]
    out: PathBuf,
    /// Pool for the images (must exist).
    #[arg(long, default_value = "rbd")]
    pool: String,
    /// Only these rows of issue 12 (1-6).
    #[arg(long, value_delimiter = ',')]
    rows: Option<Vec<u8>>,
    /// Snapshot counts of row 2 (default: quick 0,4,16; full 0,1,4,16,64,256,1000).
    #[arg(long, value_delimiter = ',')]
    steps: Option<Vec<u32>>,
    /// Rounds of row 3 (default: quick 8, full 200).
    #[arg(long)]
    rounds: Option<u32>,
    /// Repeats per measurement (default: quick 2, full 3).
    #[arg(long)]
    repeats: Option<usize>,
    /// Seconds per fio measurement (default: quick 1, full 4).
    #[arg(long)]
    runtime_secs: Option<u64>,
    /// Snapshots of row 4 (default: quick 8, full 256).
    #[arg(long)]
    frag_snaps: Option<u32>,
    /// Image sizes in GiB of row 5 (default: quick 1,16; full 1,64,1024).
    #[arg(long, value_delimiter = ',')]
    diff_sizes: Option<Vec<u64>>,
    /// Image sizes in GiB of the rollback rows (default: quick 1,16; full 1,64,1024).
    #[arg(long, value_delimiter = ',')]
    rollback_sizes: Option<Vec<u64>>,
    /// Snapshot counts of the open-time rows (default: quick 1,50; full 1,100,1000,10000).
    #[arg(long, value_delimiter = ',')]
    open_snaps: Option<Vec<u32>>,
    /// Snapshots of the native open-time row (default: quick 20, full 200).
    #[arg(long)]
    native_open_snaps: Option<u32>,
    /// Grains written for the gateway memory rows (default: quick 20000, full 250000).
    #[arg(long)]
    rss_grains: Option<u64>,
}

/// Applies the command line's overrides to the mode's defaults.
fn overrides(a: &Args, p: &mut Params) {
    if let Some(s) = &a.steps {
        p.steps = s.clone();
    }
    if let Some(r) = a.rounds {
        p.rounds = r;
    }
    if let Some(r) = a.repeats {
        p.repeats = r.max(1);
    }
    if let Some(r) = a.runtime_secs {
        p.runtime = std::time::Duration::from_secs(r.max(1));
    }
    if let Some(f) = a.frag_snaps {
        p.frag_snaps = f;
    }
    if let Some(d) = &a.diff_sizes {
        p.diff_sizes = d.iter().map(|g| g << 30).collect();
    }
    if let Some(d) = &a.rollback_sizes {
        p.rollback_sizes = d.iter().map(|g| g << 30).collect();
    }
    if let Some(o) = &a.open_snaps {
        p.open_snaps = o.clone();
    }
    if let Some(n) = a.native_open_snaps {
        p.native_open_snaps = n;
    }
    if let Some(n) = a.rss_grains {
        p.rss_grains = n;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    ctx::since_start();
    let mut p = Params::new(args.quick);
    overrides(&args, &mut p);
    let mut ctx = setup(&args, p).await?;
    let wanted = |n: u8| args.rows.as_ref().is_none_or(|r| r.contains(&n));
    let plots = args.out.join("results");
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    if wanted(1) {
        crate::progress!("{}", ceiling::GROUP);
        if let Err(e) = ceiling::run(&mut ctx).await {
            failed(&mut ctx, ceiling::GROUP, &e);
        }
    }
    write(&ctx, &args, started, false)?;
    if wanted(2) {
        crate::progress!("{}", scaling::GROUP);
        match scaling::run(&mut ctx).await {
            Ok(c) => {
                plot(
                    &mut ctx,
                    &plots,
                    "scaling-writes.png",
                    "4 KiB random writes vs snapshots",
                    "snapshots (log scale; 0 drawn at 0.5)",
                    "IOPS",
                    true,
                    &scaling::series(&c.writes),
                );
                plot(
                    &mut ctx,
                    &plots,
                    "scaling-reads.png",
                    "4 KiB random reads (head) vs snapshots",
                    "snapshots (log scale; 0 drawn at 0.5)",
                    "IOPS",
                    true,
                    &scaling::series(&c.reads),
                );
            }
            Err(e) => failed(&mut ctx, scaling::GROUP, &e),
        }
    }
    write(&ctx, &args, started, false)?;
    if wanted(3) {
        crate::progress!("{}", rolling::GROUP);
        match rolling::run(&mut ctx).await {
            Ok(r) => {
                let [io, bytes, objects] = rolling::series(&r);
                plot(
                    &mut ctx,
                    &plots,
                    "rolling-iops.png",
                    "Rolling schedule: 4 KiB random-write IOPS per round",
                    "round",
                    "IOPS",
                    false,
                    &io,
                );
                plot(
                    &mut ctx,
                    &plots,
                    "rolling-stored.png",
                    "Rolling schedule: stored MiB per round",
                    "round",
                    "MiB",
                    false,
                    &bytes,
                );
                plot(
                    &mut ctx,
                    &plots,
                    "rolling-objects.png",
                    "Rolling schedule: objects per round",
                    "round",
                    "objects",
                    false,
                    &objects,
                );
            }
            Err(e) => failed(&mut ctx, rolling::GROUP, &e),
        }
    }
    write(&ctx, &args, started, false)?;
    if wanted(4) {
        crate::progress!("{}", frag::GROUP);
        if let Err(e) = frag::run(&mut ctx).await {
            failed(&mut ctx, frag::GROUP, &e);
        }
    }
    write(&ctx, &args, started, false)?;
    if wanted(5) {
        crate::progress!("{}", diffs::GROUP);
        match diffs::run(&mut ctx).await {
            Ok(p) => plot_log(
                &mut ctx,
                &plots,
                "diff-rollback.png",
                "diff and rollback time vs image size (process start included)",
                "image size (GiB)",
                "seconds",
                &diffs::series(&p),
            ),
            Err(e) => failed(&mut ctx, diffs::GROUP, &e),
        }
    }
    write(&ctx, &args, started, false)?;
    if wanted(6) {
        crate::progress!("{}", meta::GROUP);
        if let Err(e) = meta::run(&mut ctx).await {
            failed(&mut ctx, meta::GROUP, &e);
        }
    }
    finish(ctx, &args, started)
}

async fn setup(args: &Args, p: Params) -> anyhow::Result<Ctx> {
    let tmp = tempfile::tempdir()?;
    let conf = rbd_row_bench::ceph::conf_without_cache(&ctx::ceph_conf()?, tmp.path())?;
    let stores = rbd_row_bench::gateway::ceph_stores()?;
    let store = rbd_row_bench::gateway::store(&stores, &args.pool).await?;
    let exe = std::env::current_exe()?;
    let exe_dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    let cabi = ctx::find_cabi(&exe_dir, tmp.path());
    let bins = ctx::find_bins(&exe_dir);
    let mut report = Report::default();
    let command: Vec<String> = std::env::args().collect();
    report.about = vec![
        ("Command".into(), format!("`cargo run --release -p rbd-row-bench --bin report -- {}`", command[1..].join(" "))),
        ("Mode".into(), format!("{} — {:?}", if p.quick { "quick" } else { "full" }, p)),
        ("Machine".into(), rbd_row_bench::sysinfo::machine()),
        ("Ceph".into(), rbd_row_bench::ceph::version().unwrap_or_else(|e| format!("unknown ({e})"))),
        ("Cluster".into(), "tests/ceph/cluster.sh: one bluestore OSD on a sparse file, pool size 1, on the same machine as the clients".into()),
        ("Native RBD".into(), "fio's rbd engine (system librbd 16.2) with `rbd cache = false`; snapshot reads with `rbd bench`".into()),
        ("rbd-row".into(), "fio's nbd engine against an in-process rbd-gateway; the C ABI with fio's rbd engine and LD_LIBRARY_PATH on target/<profile>".into()),
        ("RADOS ceiling".into(), "measured once, in step 1, and not alternated with the later steps that show a ratio to it; under a changing machine load that ratio can exceed 1".into()),
        ("C ABI library".into(), match &cabi { Ok(d) => format!("found ({})", d.display()), Err(e) => e.clone() }),
    ];
    Ok(Ctx {
        p,
        pool: args.pool.clone(),
        stores,
        store,
        conf,
        cabi,
        bins,
        tag: format!("{}", std::process::id()),
        tmp,
        report,
        ceiling: None,
    })
}

fn failed(ctx: &mut Ctx, group: &str, e: &anyhow::Error) {
    crate::progress!("{group}: {e:#}");
    ctx.report.rows.push(Row::not_run(
        group,
        "(the whole step)",
        "–",
        &ctx::first_line(&format!("{e:#}")),
    ));
}

#[allow(clippy::too_many_arguments)]
fn plot(
    ctx: &mut Ctx,
    dir: &Path,
    file: &str,
    title: &str,
    x: &str,
    y: &str,
    log_x: bool,
    s: &[rbd_row_bench::plot::Series],
) {
    let chart = Chart {
        title,
        x,
        y,
        log_x,
        log_y: false,
    };
    match line_chart(&dir.join(file), &chart, s) {
        Ok(()) => ctx
            .report
            .plots
            .push((title.into(), format!("results/{file}"))),
        Err(e) => ctx
            .report
            .sections
            .push((format!("Plot {file} not drawn"), format!("{e:#}"))),
    }
}

fn plot_log(
    ctx: &mut Ctx,
    dir: &Path,
    file: &str,
    title: &str,
    x: &str,
    y: &str,
    s: &[rbd_row_bench::plot::Series],
) {
    let chart = Chart {
        title,
        x,
        y,
        log_x: true,
        log_y: true,
    };
    match line_chart(&dir.join(file), &chart, s) {
        Ok(()) => ctx
            .report
            .plots
            .push((title.into(), format!("results/{file}"))),
        Err(e) => ctx
            .report
            .sections
            .push((format!("Plot {file} not drawn"), format!("{e:#}"))),
    }
}

/// Writes RESULTS.md as it stands (after each step, so an interrupted run
/// leaves the rows it finished, marked as partial).
fn write(ctx: &Ctx, args: &Args, started: Instant, done: bool) -> anyhow::Result<()> {
    let mut r = ctx.report.clone();
    if !done {
        r.about.push((
            "Partial".into(),
            format!("the run was still going after {:.0} s; the rows below are the steps finished by then", started.elapsed().as_secs_f64()),
        ));
    }
    let path = args.out.join("RESULTS.md");
    std::fs::write(&path, r.markdown("rbd-row benchmark results"))
        .with_context(|| format!("writing {}", path.display()))
}

fn finish(mut ctx: Ctx, args: &Args, started: Instant) -> anyhow::Result<()> {
    ctx.report.about.push((
        "Duration".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));
    let md = ctx.report.markdown("rbd-row benchmark results");
    let path = args.out.join("RESULTS.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    println!("{md}");
    crate::progress!(
        "wrote {} in {:.0} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

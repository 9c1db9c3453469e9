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
mod parts;
mod profile;
mod rolling;
mod scaling;
mod settle;

use anyhow::Context;
use clap::Parser;
use ctx::{Ctx, Params};
use rbd_row_bench::plot::{line_chart, Chart};
use rbd_row_bench::proc::TimedOut;
use rbd_row_bench::results::{Report, Row};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// Snapshot counts of row 2 (default: quick 0,8; full 0,1,4,16,64,256,1000).
    #[arg(long, value_delimiter = ',')]
    steps: Option<Vec<u32>>,
    /// Rounds of row 3 (default: quick 6, full 200).
    #[arg(long)]
    rounds: Option<u32>,
    /// Repeats per measurement (default: quick 1, full 3).
    #[arg(long)]
    repeats: Option<usize>,
    /// Seconds per fio measurement (default: quick 1, full 4).
    #[arg(long)]
    runtime_secs: Option<u64>,
    /// Snapshots of row 4 (default: quick 6, full 256).
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
    /// Snapshots of the native open-time row (default: quick 8, full 200).
    #[arg(long)]
    native_open_snaps: Option<u32>,
    /// Grains written for the gateway memory rows (default: quick 10000, full 250000).
    #[arg(long)]
    rss_grains: Option<u64>,
    /// Re-run each step that misses its target under `perf record -g` and
    /// put its hottest symbols under the row (on by default in full mode).
    #[arg(long)]
    profile_missed: bool,
    /// No profiles of missed rows, even in full mode.
    #[arg(long, conflicts_with = "profile_missed")]
    no_profile_missed: bool,
    /// Deadline of each external command (fio, rbd, ceph, rbd-row, perf),
    /// seconds; one that runs longer is killed and its row says "timed out"
    /// (default: quick 120, full 1800).
    #[arg(long)]
    cmd_timeout_secs: Option<u64>,
    /// Deadline of each row of issue 12 as a whole, seconds (default: quick
    /// 240, full 21600).
    #[arg(long)]
    row_timeout_secs: Option<u64>,
    /// Longest wait, before each row, for the cluster to give back the
    /// space of the previous rows' images, seconds (default: quick 30,
    /// full 900).
    #[arg(long)]
    settle_secs: Option<u64>,
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
        p.runtime = Duration::from_secs(r.max(1));
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
    if a.profile_missed {
        p.profile_missed = true;
    }
    if a.no_profile_missed {
        p.profile_missed = false;
    }
    let secs = |s: u64| Duration::from_secs(s.max(1));
    if let Some(s) = a.cmd_timeout_secs {
        p.cmd_timeout = secs(s);
    }
    if let Some(s) = a.row_timeout_secs {
        p.row_timeout = secs(s);
    }
    if let Some(s) = a.settle_secs {
        p.settle_timeout = Duration::from_secs(s);
    }
}

/// Issue 12's rows, by number, with their titles.
const ROWS: [(u8, &str); 6] = [
    (1, ceiling::GROUP),
    (2, scaling::GROUP),
    (3, rolling::GROUP),
    (4, frag::GROUP),
    (5, diffs::GROUP),
    (6, meta::GROUP),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    ctx::since_start();
    let mut p = Params::new(args.quick);
    overrides(&args, &mut p);
    rbd_row_bench::proc::set_default_timeout(p.cmd_timeout);
    let mut ctx = setup(&args, p).await?;
    let wanted = |n: u8| args.rows.as_ref().is_none_or(|r| r.contains(&n));
    let plots = args.out.join("results");
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    for (n, group) in ROWS {
        if !wanted(n) {
            continue;
        }
        let t = Instant::now();
        let mark = parts::Mark::of(&ctx);
        settle::before_row(&mut ctx, group).await;
        crate::progress!("{group}");
        run_row(&mut ctx, n, &plots).await;
        let secs = t.elapsed().as_secs_f64();
        parts::write(&args.out, n, group, &parts::part(&ctx, mark, secs))?;
        write(&args)?;
        crate::progress!(
            "row {n} took {secs:.0} s ({:.0} s since the start)",
            started.elapsed().as_secs_f64()
        );
    }
    let md = write(&args)?;
    println!("{md}");
    crate::progress!(
        "wrote {} in {:.1} min",
        args.out.join("RESULTS.md").display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// `f`, or a [`TimedOut`] error once it has run for `limit`.
async fn guard<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(TimedOut {
            command: what.to_owned(),
            after: limit,
        }
        .into()),
    }
}

async fn run_row(ctx: &mut Ctx, n: u8, plots: &Path) {
    let limit = ctx.p.row_timeout;
    let what = format!("row {n} of the report");
    match n {
        1 => {
            if let Err(e) = guard(limit, &what, ceiling::run(ctx)).await {
                failed(ctx, ceiling::GROUP, &e);
            }
        }
        2 => match guard(limit, &what, scaling::run(ctx)).await {
            Ok(c) => {
                let x = "snapshots (log scale; 0 drawn at 0.5)";
                plot(
                    ctx,
                    plots,
                    "scaling-writes.png",
                    "4 KiB random writes vs snapshots",
                    x,
                    "IOPS",
                    true,
                    &scaling::series(&c.writes),
                );
                plot(
                    ctx,
                    plots,
                    "scaling-reads.png",
                    "4 KiB random reads (head) vs snapshots",
                    x,
                    "IOPS",
                    true,
                    &scaling::series(&c.reads),
                );
            }
            Err(e) => failed(ctx, scaling::GROUP, &e),
        },
        3 => match guard(limit, &what, rolling::run(ctx)).await {
            Ok(r) => {
                let [io, bytes, objects] = rolling::series(&r);
                plot(
                    ctx,
                    plots,
                    "rolling-iops.png",
                    "Rolling schedule: 4 KiB random-write IOPS per round",
                    "round",
                    "IOPS",
                    false,
                    &io,
                );
                plot(
                    ctx,
                    plots,
                    "rolling-stored.png",
                    "Rolling schedule: stored MiB per round",
                    "round",
                    "MiB",
                    false,
                    &bytes,
                );
                plot(
                    ctx,
                    plots,
                    "rolling-objects.png",
                    "Rolling schedule: objects per round",
                    "round",
                    "objects",
                    false,
                    &objects,
                );
            }
            Err(e) => failed(ctx, rolling::GROUP, &e),
        },
        4 => {
            if let Err(e) = guard(limit, &what, frag::run(ctx)).await {
                failed(ctx, frag::GROUP, &e);
            }
        }
        5 => match guard(limit, &what, diffs::run(ctx)).await {
            Ok(p) => plot_log(
                ctx,
                plots,
                "diff-rollback.png",
                "diff and rollback time vs image size (process start included)",
                "image size (GiB)",
                "seconds",
                &diffs::series(&p),
            ),
            Err(e) => failed(ctx, diffs::GROUP, &e),
        },
        _ => {
            if let Err(e) = guard(limit, &what, meta::run(ctx)).await {
                failed(ctx, meta::GROUP, &e);
            }
        }
    }
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
        ("Date".into(), format!("started {}", rbd_row_bench::record::utc_now())),
        ("Mode".into(), format!("{} — {:?}", if p.quick { "quick" } else { "full" }, p)),
        ("Test OSD".into(), rbd_row_bench::ceph::raw_usage().map_or_else(|e| format!("unknown ({e})"), |(u, t)| format!("{} GiB raw in all, {} MiB used at the start (tests/ceph/cluster.sh: RBD_ROW_CEPH_OSD_GIB=24 for a full run)", t >> 30, u >> 20))),
        ("Machine".into(), rbd_row_bench::sysinfo::machine()),
        ("Ceph".into(), rbd_row_bench::ceph::version().unwrap_or_else(|e| format!("unknown ({e})"))),
        ("Source tree".into(), rbd_row_bench::sysinfo::source_tree()),
        ("Cluster".into(), "tests/ceph/cluster.sh: one bluestore OSD on a sparse file, pool size 1, on the same machine as the clients".into()),
        ("Native RBD".into(), "fio's rbd engine (system librbd 16.2) with `rbd cache = false`; snapshot reads with `rbd bench`".into()),
        ("rbd-row".into(), "fio's nbd engine against an in-process rbd-gateway; the C ABI with fio's rbd engine and LD_LIBRARY_PATH on target/<profile>".into()),
        ("RADOS ceiling".into(), "row 1 measures it alternating with the compound op and the engine; row 2 measures it again in every step, alternating with the systems' write runs, and its rows' ratios are to that step's ceiling".into()),
        ("Deadlines".into(), format!("each external command {} s, each row {} s; a step past its deadline is killed and its row says \"timed out\"", p.cmd_timeout.as_secs(), p.row_timeout.as_secs())),
        ("Between rows".into(), format!("the previous rows' images are removed and the report waits (at most {} s, the OSDs' snapshot-trim sleeps at 0 while it waits, restored after) until no PG is trimming and the raw usage has stopped falling; the pools' usage at the row's start is in its own table", p.settle_timeout.as_secs())),
        ("Counts against issue 12".into(), ctx::counts_note(&p)),
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
        pool_log: Vec::new(),
    })
}

fn failed(ctx: &mut Ctx, group: &str, e: &anyhow::Error) {
    crate::progress!("{group}: {e:#}");
    if rbd_row_bench::proc::is_timeout(e) {
        // The timeout first, whatever context was added around it.
        let t = e
            .chain()
            .find_map(|c| c.downcast_ref::<TimedOut>())
            .map(ToString::to_string);
        if let Some(t) = t {
            ctx.report
                .rows
                .push(Row::not_run(group, "(the whole step)", "–", &t));
            return;
        }
    }
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

/// Assembles RESULTS.md from the row parts under `args.out` and the
/// single-purpose benches' records, writes it, and returns its text.
fn write(args: &Args) -> anyhow::Result<String> {
    let md = parts::assemble(&args.out, &rbd_row_bench::record::dir())?;
    let path = args.out.join("RESULTS.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    Ok(md)
}

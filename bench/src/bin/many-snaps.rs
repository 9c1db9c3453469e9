//! 10,000 live snapshots (issue 9): "writes and reads, both through the
//! engine and over NBD, are at least 0.9× the control". One in-process
//! gateway serves two images on Ceph: one that takes `--snaps` snapshots,
//! each followed by a few random 4 KiB writes (so every epoch holds data),
//! and a control that gets the same writes and never a snapshot. Then 4 KiB
//! random writes and reads are measured on both, through the engine handle
//! and with fio's nbd engine over the gateway, alternating image and control
//! (the order flips every repeat) so machine noise hits both. The record
//! goes to `bench/results/many-snaps.md`.
//!
//! The history is built through the bench's own handles with the
//! background reclaimer held off (`reclaim_delay` of a day): no snapshot is
//! removed, so it has nothing to do, but each pass it would start after a
//! snapshot create scans the header for mergeable epochs in
//! O(epochs²) (`merge::next_merge`), which made the build time cubic. The
//! gateway then opens both images with the default options for the
//! measurements. By default the images live in a pool the bench creates
//! and deletes at the end (removing 10,000 snapshots one by one would take
//! longer than the rest of the run).
//!
//! ```sh
//! tests/ceph/cluster.sh start && eval "$(tests/ceph/cluster.sh env)"
//! cargo run --release -p rbd-row-bench --bin many-snaps -- --snaps 10000
//! ```

use anyhow::anyhow;
use clap::Parser;
use rbd_row_bench::counts::Sample;
use rbd_row_bench::fio::{Amount, FioJob, FioTarget};
use rbd_row_bench::gateway::{self, InProcGateway};
use rbd_row_bench::results::{Cell, Report, Row, Target};
use row_layer::{CreateOptions, Image, ImageOptions, Store};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Pool of the two images (an existing pool: the images and their
    /// snapshots are removed one by one); default: a new pool
    /// `many-snaps-<pid>`, deleted at the end.
    #[arg(long)]
    pool: Option<String>,
    /// Size of each image (K/M/G/T suffixes); both are filled first.
    #[arg(long, default_value = "1G")]
    size: String,
    /// Live snapshots the image takes.
    #[arg(long, default_value_t = 10_000)]
    snaps: u32,
    /// Random 4 KiB writes to both images after each snapshot.
    #[arg(long, default_value_t = 4)]
    writes_per_snap: u64,
    /// Engine I/Os per measurement.
    #[arg(long, default_value_t = 4000)]
    ops: u64,
    /// Seconds of each fio run.
    #[arg(long, default_value_t = 5)]
    fio_secs: u64,
    /// I/Os in flight.
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Repeats of every measurement on each image.
    #[arg(long, default_value_t = 3)]
    repeats: u32,
    /// Print, per measurement, counts that need no profiler (backend ops,
    /// context switches and CPU per I/O, OSD latency per op, and the
    /// CLOCK_MONOTONIC window for `perf report --time`; `counts.rs`).
    #[arg(long)]
    counts: bool,
}

const GROUP: &str = "10,000 live snapshots: 4 KiB random I/O, image vs no-snapshot control";

/// `ops` random 4 KiB reads on the engine handle with `depth` in flight (IOPS).
async fn engine_reads(img: &Image, ops: u64, depth: usize, seed: u64) -> anyhow::Result<f64> {
    Ok(rbd_row_bench::random_reads(img, 4096, ops, depth, seed)
        .await?
        .iops())
}

/// The four measurements, in the order they run on each image.
const KINDS: [&str; 4] = [
    "writes, engine (in-process)",
    "reads, engine (in-process)",
    "writes, NBD (fio nbd engine, in-process gateway)",
    "reads, NBD (fio nbd engine, in-process gateway)",
];

/// One measurement of kind `k` on `img` (served as export `name`), IOPS.
async fn measure(
    a: &Args,
    gw: &InProcGateway,
    img: &Image,
    name: &str,
    k: usize,
    seed: u64,
) -> anyhow::Result<f64> {
    match k {
        0 => {
            let t = rbd_row_bench::random_writes(img, 4096, a.ops, a.depth, seed).await?;
            img.flush().await?;
            Ok(t.iops())
        }
        1 => engine_reads(img, a.ops, a.depth, seed).await,
        _ => {
            let job = FioJob {
                target: FioTarget::Nbd { uri: gw.uri(name) },
                rw: if k == 2 { "randwrite" } else { "randread" },
                bs: 4096,
                iodepth: a.depth,
                size: img.size(),
                amount: Amount::Time(Duration::from_secs(a.fio_secs)),
                seed,
            };
            Ok(tokio::task::spawn_blocking(move || job.run())
                .await??
                .iops())
        }
    }
}

/// Takes `a.snaps` snapshots of `img`, each followed by the same random
/// writes on `img` and `ctl`; returns the seconds the snapshot creates took.
async fn build(a: &Args, img: &Image, ctl: &Image) -> anyhow::Result<Vec<f64>> {
    let mut creates = Vec::with_capacity(a.snaps as usize);
    let t0 = Instant::now();
    for i in 0..a.snaps {
        let t = Instant::now();
        img.snap_create(&format!("s{i}")).await?;
        creates.push(t.elapsed().as_secs_f64());
        let seed = 1_000_000 + u64::from(i);
        let w = a.writes_per_snap;
        let (r1, r2) = tokio::join!(
            rbd_row_bench::random_writes(img, 4096, w, 16, seed),
            rbd_row_bench::random_writes(ctl, 4096, w, 16, seed)
        );
        r1?;
        r2?;
        if (i + 1) % 500 == 0 {
            eprintln!(
                "{} snapshots after {:.0} s (last create {:.1} ms)",
                i + 1,
                t0.elapsed().as_secs_f64(),
                creates[i as usize] * 1e3
            );
        }
    }
    img.flush().await?;
    ctl.flush().await?;
    Ok(creates)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let size = rbd_row_cli::size::parse_size(&a.size, 1).map_err(|e| anyhow!("{}", e.message))?;
    anyhow::ensure!(size >= 1 << 20, "--size must be at least 1 MiB");
    let tag = std::process::id();
    let own_pool = a.pool.is_none();
    let pool = a
        .pool
        .clone()
        .unwrap_or_else(|| format!("many-snaps-{tag}"));
    if own_pool {
        rbd_row_bench::ceph::ensure_pool(&pool)?;
    }
    let r = bench(&a, &pool, size).await;
    if own_pool {
        eprintln!("deleting pool {pool}...");
        rbd_row_bench::ceph::run(
            "ceph",
            &[
                "osd",
                "pool",
                "delete",
                &pool,
                &pool,
                "--yes-i-really-really-mean-it",
            ],
        )?;
    }
    r
}

/// Builds, measures, writes the record, and (in a given pool) removes the images.
async fn bench(a: &Args, pool: &str, size: u64) -> anyhow::Result<()> {
    let stores = gateway::ceph_stores()?;
    let store = gateway::store(&stores, pool).await?;
    let tag = std::process::id();
    let (row, ctl) = (format!("ms-img-{tag}"), format!("ms-ctl-{tag}"));
    for n in [&row, &ctl] {
        store.create(n, CreateOptions::with_size(size)).await?;
    }
    let quiet = Store::new(store.backend().clone()).with_image_options(ImageOptions {
        reclaim_delay: Duration::from_secs(86_400),
        ..ImageOptions::default()
    });
    let (img, con) = (quiet.open(&row).await?, quiet.open(&ctl).await?);
    eprintln!("filling both images ({} MiB each)...", size >> 20);
    rbd_row_bench::fill(&img, 4 << 20, 16).await?;
    rbd_row_bench::fill(&con, 4 << 20, 16).await?;
    let t = Instant::now();
    let creates = build(a, &img, &con).await?;
    let build_s = t.elapsed().as_secs_f64();
    img.close().await?;
    con.close().await?;
    let gw = InProcGateway::start(stores.clone(), pool).await?;
    let r = run(a, &gw, (&row, &ctl), pool, (creates, build_s)).await;
    gw.stop().await?;
    let report = r?;
    let title = format!("many-snaps: {} live snapshots", a.snaps);
    let path = rbd_row_bench::record::write("many-snaps", &title, true, &report)?;
    println!("{}", std::fs::read_to_string(&path)?);
    eprintln!("record written to {}", path.display());
    if a.pool.is_some() {
        eprintln!("removing the images ({} snapshots)...", a.snaps);
        rbd_row_bench::remove_row_image(&store, &row).await?;
        rbd_row_bench::remove_row_image(&store, &ctl).await?;
    }
    Ok(())
}

async fn run(
    a: &Args,
    gw: &InProcGateway,
    (row, ctl): (&str, &str),
    pool: &str,
    (creates, build_s): (Vec<f64>, f64),
) -> anyhow::Result<Report> {
    let (img, con) = (gw.image(row).await?, gw.image(ctl).await?);
    let size = img.size();
    let header = img.header();
    eprintln!(
        "{} snapshots, {} epochs in {build_s:.0} s; measuring...",
        header.snapshots.len(),
        header.epochs.len()
    );
    // Warm-up, untimed: the gateway just opened both, so their first reads
    // fill the resolution caches.
    for h in [&img, &con] {
        engine_reads(h, a.ops, a.depth, 3).await?;
    }
    // samples[kind][0 = image, 1 = control]
    let mut samples = vec![[Vec::new(), Vec::new()]; KINDS.len()];
    for rep in 0..a.repeats {
        for k in 0..KINDS.len() {
            let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let (h, name) = if which == 0 { (&img, row) } else { (&con, ctl) };
                let seed = 7 + 100 * u64::from(rep) + k as u64;
                let sample = || Sample::now(gw.registry().backend_ops(), true);
                let before = a.counts.then(sample).transpose()?;
                let iops = measure(a, gw, h, name, k, seed).await?;
                eprintln!(
                    "repeat {rep} {} {}: {iops:.0} IOPS",
                    KINDS[k],
                    ["image", "control"][which]
                );
                if let Some(before) = before {
                    // fio runs for a time: its I/Os are its rate times that.
                    let ios = if k < 2 {
                        a.ops
                    } else {
                        (iops * a.fio_secs as f64) as u64
                    };
                    eprintln!("counts: {}", before.describe(&sample()?, ios));
                }
                samples[k][which].push(iops);
            }
        }
    }
    let mut report = Report {
        about: vec![
        (
            "Images".into(),
            format!(
                "two {} MiB images on pool {}, filled sequentially; the image took {} snapshots, each followed by {} random 4 KiB writes that the control got too (the image ends with {} epochs); building took {build_s:.0} s, through the bench's own handles with the background reclaimer held off (see the source)",
                size >> 20, pool, header.snapshots.len(), a.writes_per_snap, header.epochs.len()
            ),
        ),
        (
            "Measurements".into(),
            format!(
                "{} repeats; in each, every measurement runs on the image and on the control in turn (the order flips every repeat); engine: {} I/Os, {} in flight; NBD: fio's nbd engine for {} s, iodepth {}, against one in-process rbd-gateway serving both",
                a.repeats, a.ops, a.depth, a.fio_secs, a.depth
            ),
        ),
    ],
        ..Report::default()
    };
    for (k, name) in KINDS.iter().enumerate() {
        report.rows.push(
            Row::new(
                GROUP,
                &format!("4 KiB random {name}"),
                "IOPS",
                Cell::from_samples(&samples[k][0]),
            )
            .control(Cell::from_samples(&samples[k][1]))
            .target(Target::vs_control("≥ 0.9× control (issue 9)", true, 0.9)),
        );
    }
    report.rows.push(Row::new(
        GROUP,
        &format!(
            "snapshot create while building (median over all {})",
            creates.len()
        ),
        "ms",
        Cell::from_samples(&creates.iter().map(|s| s * 1e3).collect::<Vec<_>>()),
    ));
    let last = &creates[creates.len().saturating_sub(100)..];
    report.rows.push(Row::new(
        GROUP,
        "snapshot create, the last 100",
        "ms",
        Cell::from_samples(&last.iter().map(|s| s * 1e3).collect::<Vec<_>>()),
    ));
    Ok(report)
}

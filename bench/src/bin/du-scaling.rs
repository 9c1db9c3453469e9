//! Issue 9's `du` target: space accounting costs O(changed grains), under
//! 1 s at 10,000 snapshots.
//!
//! An image on the in-memory backend takes N snapshots, each after a round
//! of random 4 KiB writes (1 MiB per round, as in the measurement of
//! `rbd-row du`: 0.04 s at 10 snapshots, 33.7 s at 600). At each checkpoint
//! `Image::space_usage` (what `rbd-row du` computes once the image is open)
//! is timed, alternating with the same call on a no-snapshot control image
//! that received the same writes, so the ratio shows what the history
//! costs. `space_usage` does no backend I/O, so the in-memory backend
//! measures all of its cost.
//!
//! The in-memory backend stores objects densely, so every write lands on
//! the first grain of a random 64 KiB object (a 1 GiB image has 16,384 such
//! places): memory stays at 4 KiB per written grain, and the deltas have
//! the same shape as random grains over a smaller image.
//!
//! The record goes to `bench/results/du-scaling.md`.

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use rbd_row_bench::results::{Cell, Report, Row, Target};
use row_layer::backend::mem::MemBackend;
use row_layer::backend::Backend;
use row_layer::{CreateOptions, Image, ImageOptions, Store};
use std::sync::Arc;
use std::time::Instant;

/// Object size of both images: writes land on the first grain of one.
const OBJECT: u64 = 64 << 10;

#[derive(Parser)]
struct Args {
    /// Snapshot counts at which `space_usage` is timed (ascending).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    at: Vec<u64>,
    /// Random 4 KiB writes before each snapshot.
    #[arg(long, default_value_t = 256)]
    writes: u64,
    /// Image size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Timed calls per checkpoint and image (the median is printed).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

async fn image(name: &str, size: u64) -> Result<Image> {
    // No snapshot is ever removed, so the background reclaimer has nothing
    // to do; held off, since each pass it starts after a snapshot create
    // scans the header in O(epochs²) (`merge::next_merge`).
    let store = Store::new(Arc::new(MemBackend::new()) as Arc<dyn Backend>).with_image_options(
        ImageOptions {
            reclaim_delay: std::time::Duration::from_secs(86_400),
            ..ImageOptions::default()
        },
    );
    let opts = CreateOptions {
        size,
        object_size: OBJECT,
        grain_size: 4096,
    };
    store.create(name, opts).await?;
    Ok(store.open(name).await?)
}

/// Appends `repeats` timings (seconds) of `space_usage` on `img` to `t`.
fn time_du(img: &Image, repeats: usize, t: &mut Vec<f64>) -> Result<()> {
    for _ in 0..repeats {
        let start = Instant::now();
        img.space_usage()?;
        t.push(start.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The in-memory backend keeps every grain version a live snapshot sees:
/// at least 4 KiB per write, so 10,000 snapshots of 256 writes hold 10 GiB.
/// Refuse a run whose grains alone would take more than half the memory
/// available now (one did, and swapped the whole machine).
fn ensure_fits_in_memory(a: &Args) -> Result<()> {
    let snaps = a.at.iter().copied().max().unwrap_or(0);
    let need = snaps * a.writes * 4096;
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let avail_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no MemAvailable in /proc/meminfo"))?;
    anyhow::ensure!(
        need <= avail_kib * 1024 / 2,
        "{snaps} snapshots x {} writes would keep {} MiB of grains in memory; {} MiB are available: lower --writes or --at",
        a.writes,
        need >> 20,
        avail_kib >> 10
    );
    Ok(())
}

const GROUP: &str =
    "du (Image::space_usage) on the in-memory backend, image vs no-snapshot control";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let size = a.size_mib << 20;
    ensure_fits_in_memory(&a)?;
    let img = image("img", size).await?;
    let control = image("control", size).await?;
    let mut rng = SmallRng::seed_from_u64(9);
    let mut report = Report::default();
    let mut taken = 0u64;
    for &n in &a.at {
        while taken < n {
            for _ in 0..a.writes {
                let off = rng.gen_range(0..size / OBJECT) * OBJECT;
                let data = Bytes::from(vec![rng.gen::<u8>(); 4096]);
                img.write(off, data.clone()).await?;
                control.write(off, data).await?;
            }
            // Flushed, so the in-memory backend's queue of unflushed ops
            // (kept for crash simulation) stays bounded.
            img.flush().await?;
            control.flush().await?;
            img.snap_create(&format!("s{taken}")).await?;
            taken += 1;
        }
        let (mut ti, mut tc) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            time_du(&img, a.repeats, &mut ti)?;
            time_du(&control, a.repeats, &mut tc)?;
        }
        let mut row = Row::new(
            GROUP,
            &format!("space_usage at {n} snapshots"),
            "s",
            Cell::from_samples(&ti),
        )
        .control(Cell::from_samples(&tc));
        if n >= 10_000 {
            row = row.target(Target::value(
                "< 1 s at 10,000 snapshots (issue 9)",
                false,
                1.0,
            ));
        }
        eprintln!(
            "{n} snapshots: {:?} s, control {:?} s",
            row.rbd_row.median(),
            row.control.as_ref().and_then(Cell::median)
        );
        report.rows.push(row);
    }
    report.about.push((
        "Workload".into(),
        format!(
            "{} MiB images with {} KiB objects on the in-memory backend; {} random 4 KiB writes (to both) before each snapshot of the image; space_usage timed {} times per image and checkpoint, twice alternating image and control",
            a.size_mib,
            OBJECT >> 10,
            a.writes,
            a.repeats
        ),
    ));
    let path = rbd_row_bench::record::write(
        "du-scaling",
        "du-scaling: space accounting vs snapshots",
        false,
        &report,
    )?;
    println!("{}", std::fs::read_to_string(&path)?);
    Ok(())
}

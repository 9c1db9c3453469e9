//! Issue 9's `du` target: space accounting costs O(changed grains), under
//! 1 s at 10,000 snapshots.
//!
//! An image on the in-memory backend takes N snapshots, each after a round
//! of random 4 KiB writes (the issue measured `rbd-row du` with 1 MiB per
//! round, 256 writes: 0.04 s at 10 snapshots, 33.7 s at 600). At each
//! checkpoint `Image::space_usage` (what `rbd-row du` computes once the
//! image is open) is timed, alternating with the same call on a
//! no-snapshot control image that received the same writes, so the ratio
//! shows what the history costs. `space_usage` does no backend I/O, so the
//! in-memory backend measures all of its cost.
//!
//! Every write lands on the first grain of a random 64 KiB object (a 1 GiB
//! image has 16,384 such places), so each write of the image makes a new
//! object in its epoch. Memory is the bench's, not the engine's: the
//! in-memory backend keeps a live and a durable copy of every object (4 KiB
//! page plus its page map, grain-state omap and object entry, about 5 KiB
//! each: about 10.4 KiB per write, measured with heaptrack), while the
//! engine's own state grew about 2.5 KiB per snapshot (epoch records,
//! deltas, chain). 256 writes per snapshot would need about 26 GiB at
//! 10,000 snapshots, so a 10,000-snapshot run takes fewer (`--writes`). The
//! run is refused up front when even the backend's two page copies would
//! not fit, and stopped when the resident memory measured so far projects
//! beyond `--max-rss-mib`.
//!
//! The record goes to `bench/results/du-scaling.md`.

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use rbd_row_bench::results::{Cell, Report, Row, Target};
use rbd_row_bench::sysinfo::rss;
use row_layer::backend::mem::MemBackend;
use row_layer::backend::Backend;
use row_layer::{CreateOptions, Image, Store};
use std::sync::Arc;
use std::time::Instant;

/// Object size of both images: writes land on the first grain of one.
const OBJECT: u64 = 64 << 10;
/// Snapshots between two looks at the resident memory.
const RSS_EVERY: u64 = 100;

#[derive(Parser)]
struct Args {
    /// Snapshot counts at which `space_usage` is timed (ascending).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,3000,10000")]
    at: Vec<u64>,
    /// Random 4 KiB writes before each snapshot.
    #[arg(long, default_value_t = 16)]
    writes: u64,
    /// Image size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Timed calls per checkpoint and image (the median is printed).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Stop when the resident memory reaches, or is projected to reach by
    /// the last checkpoint, this many MiB (also capped at half the memory
    /// available at start).
    #[arg(long, default_value_t = 3072)]
    max_rss_mib: u64,
}

async fn image(name: &str, size: u64) -> Result<Image> {
    let store = Store::new(Arc::new(MemBackend::new()) as Arc<dyn Backend>);
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

/// The memory limit in bytes: `--max-rss-mib`, at most half of what is
/// available now (a run that took more swapped the whole machine).
fn memory_limit(a: &Args) -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let avail_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no MemAvailable in /proc/meminfo"))?;
    Ok((a.max_rss_mib << 20).min(avail_kib * 1024 / 2))
}

/// Refuses a run whose grains alone cannot fit: the in-memory backend keeps
/// a live and a durable copy of every 4 KiB page a write makes (the rest of
/// its cost, about 2 KiB more per write, and the engine's are on top).
fn ensure_fits(a: &Args, limit: u64) -> Result<()> {
    let snaps = a.at.iter().copied().max().unwrap_or(0);
    let need = snaps * a.writes * 2 * 4096;
    anyhow::ensure!(
        need <= limit,
        "{snaps} snapshots x {} writes keep at least {} MiB of pages in the in-memory backend; the limit is {} MiB: lower --writes or --at",
        a.writes,
        need >> 20,
        limit >> 20
    );
    Ok(())
}

/// Watches the resident memory while snapshots are taken: stops the run
/// when it is over the limit, or when the growth over the last
/// `RSS_EVERY` snapshots, continued to the last checkpoint, would be (from
/// a tenth of the run on, once the control image's early growth is past).
struct MemoryWatch {
    limit: u64,
    last: (u64, u64),
    peak: u64,
}

impl MemoryWatch {
    fn new(limit: u64) -> Result<MemoryWatch> {
        let now = rss(std::process::id())?;
        Ok(MemoryWatch {
            limit,
            last: (0, now),
            peak: now,
        })
    }

    fn check(&mut self, taken: u64, last_at: u64) -> Result<u64> {
        let now = rss(std::process::id())?;
        self.peak = self.peak.max(now);
        let per_snap = now.saturating_sub(self.last.1) / (taken - self.last.0).max(1);
        let projected = now + per_snap * last_at.saturating_sub(taken);
        anyhow::ensure!(
            now <= self.limit && (taken * 10 < last_at || projected <= self.limit),
            "at {taken} snapshots the resident memory is {} MiB, growing {} KiB per snapshot: {} MiB projected at {last_at}, over the limit of {} MiB; lower --writes or --at",
            now >> 20,
            per_snap >> 10,
            projected >> 20,
            self.limit >> 20
        );
        self.last = (taken, now);
        Ok(now)
    }
}

/// The process's peak resident memory (`VmHWM`), bytes.
fn peak_rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))?;
    Ok(kib * 1024)
}

const GROUP: &str =
    "du (Image::space_usage) on the in-memory backend, image vs no-snapshot control";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let size = a.size_mib << 20;
    let last_at = a.at.iter().copied().max().unwrap_or(0);
    let limit = memory_limit(&a)?;
    ensure_fits(&a, limit)?;
    let img = image("img", size).await?;
    let control = image("control", size).await?;
    let mut watch = MemoryWatch::new(limit)?;
    let mut rng = SmallRng::seed_from_u64(9);
    let mut report = Report::default();
    let mut memory = String::from("| snapshots | RSS (MiB) |\n|---|---|\n");
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
            if taken.is_multiple_of(RSS_EVERY) {
                watch.check(taken, last_at)?;
            }
        }
        let resident = watch.check(taken, last_at)?;
        memory.push_str(&format!("| {n} | {} |\n", resident >> 20));
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
            "{n} snapshots: {:?} s, control {:?} s, RSS {} MiB",
            row.rbd_row.median(),
            row.control.as_ref().and_then(Cell::median),
            resident >> 20
        );
        report.rows.push(row);
    }
    report.about.push((
        "Workload".into(),
        format!(
            "{} MiB images with {} KiB objects on the in-memory backend; {} random 4 KiB writes (to both) before each snapshot of the image (the issue's `du` measurement wrote 256, 1 MiB; this many keeps {} snapshots within {} MiB of memory); space_usage timed {} times per image and checkpoint, twice alternating image and control; background reclaimer on (default options)",
            a.size_mib,
            OBJECT >> 10,
            a.writes,
            last_at,
            limit >> 20,
            a.repeats
        ),
    ));
    report.about.push((
        "Memory".into(),
        format!(
            "peak RSS (VmHWM) {} MiB (both images; mostly the in-memory backend's two copies of every written page, about 10 KiB per write; see the table below)",
            peak_rss()?.max(watch.peak) >> 20
        ),
    ));
    report
        .sections
        .push(("Resident memory of the bench".into(), memory));
    let path = rbd_row_bench::record::write(
        "du-scaling",
        "du-scaling: space accounting vs snapshots",
        false,
        &report,
    )?;
    println!("{}", std::fs::read_to_string(&path)?);
    Ok(())
}

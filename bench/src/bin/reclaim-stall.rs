//! Issue 9's reclaim target on RADOS: the reclaimer runs in the background
//! and no client I/O stalls more than 20 ms because of it.
//!
//! Each repeat builds a history on the image (snapshots with whole-object
//! and random 4 KiB overwrites after each, then a big head), lets the
//! reclaimer settle, and then, while 4 KiB random reads and writes run
//! against the image, removes every snapshot but the last (trims and
//! merges) and rolls back to it (the big head becomes garbage). Per-I/O
//! latency is recorded from the first removal until the reclaimer is idle
//! again. The same load runs on a control image that never reclaims, for
//! as long, alternating which goes first, so OSD noise shows up in both.
//!
//! ```sh
//! export RBD_ROW_CEPH_DIR=/tmp/ceph-x; tests/ceph/cluster.sh start
//! eval "$(tests/ceph/cluster.sh env)"
//! cargo run --release -p rbd-row-bench --bin reclaim-stall -- --reps 3
//! ```

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use row_layer::{CreateOptions, Image, ImageOptions, Store};
use row_rados::{ClusterConfig, RadosCluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Image size in MiB (image and control).
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    #[arg(long, default_value = "rbd")]
    pool: String,
    /// Snapshots built (and all but the last removed) per repeat.
    #[arg(long, default_value_t = 8)]
    snaps: u32,
    /// Whole 4 MiB objects rewritten after each snapshot.
    #[arg(long, default_value_t = 8)]
    churn_objects: u64,
    /// Random 4 KiB writes after each snapshot.
    #[arg(long, default_value_t = 1000)]
    churn_writes: u64,
    /// MiB written to the head (4 MiB writes) before the rollback discards it.
    #[arg(long, default_value_t = 128)]
    head_mib: u64,
    /// Client I/Os in flight (half reads, half writes).
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Repeats (each measures the image and the control once).
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// `ImageOptions::reclaim_ops_per_sec` (default: the engine's default).
    #[arg(long)]
    reclaim_ops_per_sec: Option<u32>,
    /// The stall target in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    target_ms: f64,
}

/// One completed client I/O.
#[derive(Clone, Copy)]
struct Sample {
    /// Start, in ms since the phase began.
    at_ms: f64,
    lat_ms: f64,
    write: bool,
}

/// Runs 4 KiB random reads and writes (`depth` in flight) until `stop`.
async fn load(
    img: Image,
    depth: usize,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> anyhow::Result<Vec<Sample>> {
    let t0 = Instant::now();
    let slots = img.size() / 4096;
    let mut tasks = Vec::new();
    for w in 0..depth {
        let (img, stop) = (img.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed * 1000 + w as u64);
            let write = w % 2 == 0;
            let data = Bytes::from(vec![w as u8; 4096]);
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let off = rng.gen_range(0..slots) * 4096;
                let t = Instant::now();
                if write {
                    img.write(off, data.clone()).await?;
                } else {
                    img.read(off, 4096).await?;
                }
                out.push(Sample {
                    at_ms: (t - t0).as_secs_f64() * 1e3,
                    lat_ms: t.elapsed().as_secs_f64() * 1e3,
                    write,
                });
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Whole-object rewrites at random objects, then random 4 KiB writes.
async fn churn(img: &Image, objects: u64, writes: u64, seed: u64) -> anyhow::Result<()> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n_obj = img.size() >> 22;
    let chunk = Bytes::from(vec![seed as u8; 4 << 20]);
    for _ in 0..objects {
        img.write(rng.gen_range(0..n_obj) << 22, chunk.clone())
            .await?;
    }
    rbd_row_bench::random_writes(img, 4096, writes, 16, seed).await?;
    Ok(())
}

/// Writes `mib` MiB of 4 MiB chunks from offset 0 (the head to discard).
async fn big_head(img: &Image, mib: u64, seed: u64) -> anyhow::Result<()> {
    let chunk = Bytes::from(vec![seed as u8 ^ 0xa5; 4 << 20]);
    let mut tasks = Vec::new();
    for o in 0..(mib / 4).min(img.size() >> 22) {
        let img = img.clone();
        let c = chunk.clone();
        tasks.push(tokio::spawn(async move { img.write(o << 22, c).await }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

struct Phase {
    samples: Vec<Sample>,
    /// Set for the reclaim phase: how long each step took (ms).
    steps: Vec<(String, f64)>,
    elapsed: Duration,
}

/// The load on `img` while `work` runs (plus `tail` after it).
async fn measured<F, Fut>(img: &Image, depth: usize, seed: u64, work: F) -> anyhow::Result<Phase>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<(String, f64)>>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let bg = tokio::spawn(load(img.clone(), depth, stop.clone(), seed));
    let t = Instant::now();
    let steps = work().await?;
    let elapsed = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let samples = bg.await??;
    Ok(Phase {
        samples,
        steps,
        elapsed,
    })
}

/// Removes every snapshot but `keep`, rolls back to `keep` and waits for
/// the reclaimer; returns each step's duration.
async fn reclaim_storm(img: &Image, keep: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut steps = Vec::new();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let names: Vec<String> = img
        .snap_list()
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n != keep)
        .collect();
    let t = Instant::now();
    let mut worst: f64 = 0.0;
    for n in &names {
        let s = Instant::now();
        img.snap_remove(n).await?;
        worst = worst.max(s.elapsed().as_secs_f64() * 1e3);
    }
    steps.push((format!("{} snap removes (slowest)", names.len()), worst));
    let s = Instant::now();
    img.snap_rollback(keep).await?;
    steps.push(("rollback".into(), s.elapsed().as_secs_f64() * 1e3));
    let s = Instant::now();
    img.reclaim().await?;
    steps.push((
        "reclaim after rollback (until idle)".into(),
        s.elapsed().as_secs_f64() * 1e3,
    ));
    steps.push(("removal to idle".into(), t.elapsed().as_secs_f64() * 1e3));
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(steps)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// (count, p99, p99.9, max) in ms, of reads or writes or both.
fn stats(s: &[Sample], which: Option<bool>) -> (usize, f64, f64, f64) {
    let mut v: Vec<f64> = s
        .iter()
        .filter(|x| which.is_none_or(|w| x.write == w))
        .map(|x| x.lat_ms)
        .collect();
    v.sort_by(f64::total_cmp);
    let max = v.last().copied().unwrap_or(f64::NAN);
    (v.len(), percentile(&v, 0.99), percentile(&v, 0.999), max)
}

fn print_phase(rep: u32, name: &str, p: &Phase, target: f64) {
    for (kind, which) in [
        ("all", None),
        ("writes", Some(true)),
        ("reads", Some(false)),
    ] {
        let (n, p99, p999, max) = stats(&p.samples, which);
        println!(
            "| {rep} | {name} | {kind} | {n} | {p99:.2} | {p999:.2} | {max:.2} | {} |",
            if max <= target { "met" } else { "MISSED" }
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let size = a.size_mib << 20;
    let tag = std::process::id();
    let cluster = RadosCluster::connect(ClusterConfig::default())
        .await
        .context("connecting (set CEPH_CONF)")?;
    let mut opts = ImageOptions::default();
    if let Some(r) = a.reclaim_ops_per_sec {
        opts.reclaim_ops_per_sec = r;
    }
    let knob = opts.reclaim_ops_per_sec;
    let store = Store::new(Arc::new(
        cluster.open_pool(&a.pool, &format!("stall-{tag}")).await?,
    ))
    .with_image_options(opts);
    let (row, ctl) = (format!("stall-row-{tag}"), format!("stall-ctl-{tag}"));
    store.create(&row, CreateOptions::with_size(size)).await?;
    store.create(&ctl, CreateOptions::with_size(size)).await?;
    let img = store.open(&row).await?;
    let control = store.open(&ctl).await?;
    eprintln!("filling both images ({} MiB each)...", a.size_mib);
    rbd_row_bench::fill(&img, 4 << 20, 16).await?;
    rbd_row_bench::fill(&control, 4 << 20, 16).await?;
    println!(
        "# reclaim stall: {} MiB images, {} snapshots/repeat ({} whole objects + {} random 4 KiB writes after each), {} MiB head discarded, {} I/Os in flight, reclaim_ops_per_sec {}",
        a.size_mib, a.snaps, a.churn_objects, a.churn_writes, a.head_mib, a.depth,
        if knob == 0 { "unlimited".to_string() } else { knob.to_string() }
    );
    println!(
        "| rep | image | I/O | count | p99 ms | p99.9 ms | max ms | max ≤ {} ms |",
        a.target_ms
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut worst = (0.0f64, 0.0f64, 0.0f64, 0.0f64); // image max, p99.9; control max, p99.9
    let mut timings = Vec::new();
    let mut ratios = Vec::new();
    for rep in 0..a.reps {
        for i in 0..a.snaps {
            img.snap_create(&format!("r{rep}-s{i}")).await?;
            churn(
                &img,
                a.churn_objects,
                a.churn_writes,
                u64::from(rep * 100 + i),
            )
            .await?;
        }
        let keep = format!("r{rep}-keep");
        img.snap_create(&keep).await?;
        big_head(&img, a.head_mib, u64::from(rep)).await?;
        img.reclaim().await?;
        img.flush().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let seed = u64::from(rep);
        let run_image = || measured(&img, a.depth, seed, || reclaim_storm(&img, &keep));
        let (image, ctl_phase) = if rep % 2 == 0 {
            let i = run_image().await?;
            let d = i.elapsed;
            let c = measured(&control, a.depth, seed, || async move {
                tokio::time::sleep(d).await;
                Ok(vec![])
            })
            .await?;
            (i, c)
        } else {
            // Control first, as long as the previous repeat's reclaim phase.
            let d = timings.last().map_or(Duration::from_secs(3), |(_, d)| *d);
            let c = measured(&control, a.depth, seed, || async move {
                tokio::time::sleep(d).await;
                Ok(vec![])
            })
            .await?;
            (run_image().await?, c)
        };
        print_phase(rep, "reclaiming", &image, a.target_ms);
        print_phase(rep, "control", &ctl_phase, a.target_ms);
        let (_, _, ip, im) = stats(&image.samples, None);
        let (_, _, cp, cm) = stats(&ctl_phase.samples, None);
        worst = (
            worst.0.max(im),
            worst.1.max(ip),
            worst.2.max(cm),
            worst.3.max(cp),
        );
        ratios.push((ip / cp, im / cm));
        let mut slow: Vec<Sample> = image.samples.clone();
        slow.sort_by(|x, y| y.lat_ms.total_cmp(&x.lat_ms));
        let top: Vec<String> = slow
            .iter()
            .take(5)
            .map(|s| {
                format!(
                    "{:.1} ms {} at +{:.0} ms",
                    s.lat_ms,
                    if s.write { "write" } else { "read" },
                    s.at_ms
                )
            })
            .collect();
        eprintln!(
            "rep {rep}: steps {:?}; slowest I/Os while reclaiming: {}",
            image.steps,
            top.join(", ")
        );
        timings.push((image.steps.clone(), image.elapsed));
    }
    println!();
    println!(
        "worst over {} repeats: reclaiming max {:.2} ms, p99.9 {:.2} ms; control max {:.2} ms, p99.9 {:.2} ms; target max ≤ {} ms: {}",
        a.reps,
        worst.0,
        worst.1,
        worst.2,
        worst.3,
        a.target_ms,
        if worst.0 <= a.target_ms { "met" } else { "MISSED" }
    );
    let r: Vec<String> = ratios
        .iter()
        .map(|(p, m)| format!("{p:.2}, {m:.2}"))
        .collect();
    println!(
        "reclaiming / control per repeat (p99.9, max): {}",
        r.join("; ")
    );
    for (rep, (steps, d)) in timings.iter().enumerate() {
        let s: Vec<String> = steps
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.0} ms"))
            .collect();
        println!(
            "rep {rep}: phase {:.2} s; {}",
            d.as_secs_f64(),
            s.join("; ")
        );
    }
    img.close().await?;
    control.close().await?;
    for name in [&row, &ctl] {
        rbd_row_bench::remove_row_image(&store, name).await?;
    }
    Ok(())
}

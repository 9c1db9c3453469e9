//! Issue 9's first target on the in-memory backend: a rolling "snapshot n,
//! random writes, remove n-5" schedule, run for many rounds, must keep the
//! per-write cost (backend ops and CPU) of its last rounds within 5% of its
//! early rounds, and its stored data bounded by what the live views need.
//!
//! A no-snapshot control image receives the same writes in the same rounds,
//! alternating with the rolling image, so machine drift hits both; the
//! figures printed are ratios (round N / round 10, and image / control).
//! The in-memory backend isolates the engine's own cost from RADOS.

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use row_layer::backend::fault::FaultBackend;
use row_layer::backend::mem::MemBackend;
use row_layer::backend::Backend;
use row_layer::{CreateOptions, Image, Store};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Rounds of the rolling schedule.
    #[arg(long, default_value_t = 10_000)]
    rounds: u64,
    /// Random 4 KiB writes per round.
    #[arg(long, default_value_t = 100)]
    writes: u64,
    /// Image size in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// Print a row every this many rounds.
    #[arg(long, default_value_t = 1000)]
    every: u64,
}

struct Side {
    mem: Arc<MemBackend>,
    fault: Arc<FaultBackend>,
    img: Image,
}

async fn side(size: u64) -> Result<Side> {
    let mem = Arc::new(MemBackend::new());
    let fault = Arc::new(FaultBackend::new(mem.clone() as Arc<dyn Backend>));
    let store = Store::new(fault.clone() as Arc<dyn Backend>);
    store.create("img", CreateOptions::with_size(size)).await?;
    let img = store.open("img").await?;
    Ok(Side { mem, fault, img })
}

/// Data objects and stored data grains (`D` keys) of the store.
async fn stored(mem: &MemBackend) -> Result<(u64, u64)> {
    let objects = mem.list("rbd_row_data.").await?;
    let mut grains = 0;
    for oid in &objects {
        let mut after = String::new();
        loop {
            let page = mem.omap_get(oid, &after, "", 1024).await?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            grains += page.iter().filter(|(_, v)| v.as_ref() == b"D").count() as u64;
        }
    }
    Ok((objects.len() as u64, grains))
}

/// One round's writes; returns (backend ops per write, microseconds per write).
async fn writes(s: &Side, rng: &mut SmallRng, n: u64, size: u64) -> Result<(f64, f64)> {
    let before = s.fault.counts();
    let t = Instant::now();
    for _ in 0..n {
        let off = rng.gen_range(0..size / 4096) * 4096;
        s.img
            .write(off, Bytes::from(vec![rng.gen::<u8>(); 4096]))
            .await?;
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let ops = (s.fault.counts() - before).total() as f64 / n as f64;
    Ok((ops, us))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let size = a.size_mib << 20;
    let image = side(size).await?;
    let control = side(size).await?;
    let mut rng = SmallRng::seed_from_u64(1);
    let mut base: Option<(f64, f64, f64)> = None;
    println!(
        "| round | ops/write | µs/write | µs/write control | image/control | vs round 10 (ops, µs ratio; target ≤ 1.05) | epochs | data objects | stored grains | control grains |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in 0..a.rounds {
        image.img.snap_create(&format!("s{r}")).await?;
        if r >= 5 {
            image.img.snap_remove(&format!("s{}", r - 5)).await?;
        }
        let (ops, us) = writes(&image, &mut rng, a.writes, size).await?;
        let (_, cus) = writes(&control, &mut rng, a.writes, size).await?;
        let ratio = us / cus;
        if r == 10 {
            base = Some((ops, us, ratio));
        }
        if r == 10 || (r + 1) % a.every == 0 || r + 1 == a.rounds {
            image.img.reclaim().await?;
            let (bops, _, bratio) = base.unwrap_or((ops, us, ratio));
            let epochs = image.img.header().epochs.len();
            let (objects, grains) = stored(&image.mem).await?;
            let (_, control_grains) = stored(&control.mem).await?;
            println!(
                "| {r} | {ops:.3} | {us:.1} | {cus:.1} | {ratio:.2} | {:.3}, {:.2} | {epochs} | {objects} | {grains} | {control_grains} |",
                ops / bops,
                ratio / bratio,
            );
        }
    }
    Ok(())
}

//! Open-to-first-read time of an owned head (what a gateway failover
//! costs), with and without head checkpoints, side by side on RADOS.
//!
//! Two images of the same size get the same random 4 KiB writes since
//! their creation (no snapshot): one is written with background
//! checkpoints off (`checkpoint_objects = 0`, no interval), so open lists
//! the grain omap of every touched object, as before checkpoints existed;
//! the other with the default knobs (a checkpoint every
//! `checkpoint_objects` registrations). Then both are closed and opened
//! alternately, `--rounds` times each, timing `Store::open` plus one 4 KiB
//! read. Prints medians, the ratio, and the ≤ 1 s target of issue 9.
//!
//! Bytes: every written grain stores 4 KiB, so `--grains` × 8 KiB lands in
//! the pool (both images). Open's cost depends on touched objects (one
//! omap listing each) and keys per object, which random grains over a
//! large thin image maximise: 100k grains over 1 TiB touch ~92k objects.

use anyhow::Context;
use clap::Parser;
use row_layer::backend::Backend;
use row_layer::{CreateOptions, ImageOptions, Store};
use row_rados::{ClusterConfig, RadosCluster};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "rbd")]
    pool: String,
    /// Image size in GiB.
    #[arg(long, default_value_t = 1024)]
    size_gib: u64,
    /// Random 4 KiB grains written into each image.
    #[arg(long, default_value_t = 100_000)]
    grains: u64,
    /// Writes in flight.
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Opens of each image, alternating.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

fn store(be: &Arc<dyn Backend>, checkpoints: bool) -> Store {
    let opts = if checkpoints {
        ImageOptions::default()
    } else {
        ImageOptions {
            checkpoint_objects: 0,
            checkpoint_interval: Duration::ZERO,
            ..ImageOptions::default()
        }
    };
    Store::new(be.clone()).with_image_options(opts)
}

async fn open_to_first_read(store: &Store) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let img = store.open("img").await?;
    img.read(0, 4096).await?;
    let took = start.elapsed();
    img.close().await?;
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = RadosCluster::connect(ClusterConfig::default())
        .await
        .context("connect (CEPH_CONF)")?;
    let mut stores = Vec::new();
    for (k, checkpoints) in [false, true].into_iter().enumerate() {
        let ns = format!("open-time-{}-{k}", std::process::id());
        let be: Arc<dyn Backend> = Arc::new(cluster.open_pool(&args.pool, &ns).await?);
        let store = store(&be, checkpoints);
        store
            .create("img", CreateOptions::with_size(args.size_gib << 30))
            .await?;
        let img = store.open("img").await?;
        let t = rbd_row_bench::random_writes(&img, 4096, args.grains, args.depth, 42).await?;
        img.close().await?;
        eprintln!(
            "image {k} (checkpoints {checkpoints}): {} grains written at {:.0} writes/s",
            args.grains,
            t.iops()
        );
        stores.push(store);
    }
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        without.push(open_to_first_read(&stores[0]).await?);
        with.push(open_to_first_read(&stores[1]).await?);
    }
    let (a, b) = (median(without), median(with));
    println!(
        "open to first read, {} random 4 KiB grains on a {} GiB thin image, median of {}:",
        args.grains, args.size_gib, args.rounds
    );
    println!("without checkpoints  {:>8.3} s", a.as_secs_f64());
    println!(
        "with checkpoints     {:>8.3} s   (target <= 1 s: {})",
        b.as_secs_f64(),
        if b <= Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "ratio without/with   {:>8.1}x",
        a.as_secs_f64() / b.as_secs_f64()
    );
    Ok(())
}

//! What one client write costs at the RADOS layer, through row-rados, with
//! the same number of writes in flight: a plain 4 KiB write, the engine's
//! compound op (write + one omap key), and a full engine write — so a gap
//! between rbd-row and native RBD can be attributed to the backend op or to
//! the engine. Runs are interleaved; the table shows ratios to the plain write.

use anyhow::Context;
use clap::Parser;
use rbd_row_bench::raw::rados_writes;
use row_layer::backend::Backend;
use row_layer::{CreateOptions, Store};
use row_rados::{ClusterConfig, RadosCluster};
use std::sync::Arc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "rbd")]
    pool: String,
    #[arg(long, default_value_t = 8000)]
    ops: u64,
    #[arg(long, default_value_t = 16)]
    depth: usize,
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = RadosCluster::connect(ClusterConfig::default())
        .await
        .context("connect (CEPH_CONF)")?;
    let ns = format!("rados-ops-{}", std::process::id());
    let be: Arc<dyn Backend> = Arc::new(cluster.open_pool(&args.pool, &ns).await?);
    let store = Store::new(be.clone());
    store
        .create("img", CreateOptions::with_size(512 << 20))
        .await?;
    let img = store.open("img").await?;
    rbd_row_bench::fill(&img, 4 << 20, 16).await?;
    rados_writes(be.clone(), 2000, args.depth, true).await?; // warm-up
    let (mut plain, mut omap, mut engine) = (0.0, 0.0, 0.0);
    for r in 0..args.rounds {
        plain += rados_writes(be.clone(), args.ops, args.depth, false).await?;
        omap += rados_writes(be.clone(), args.ops, args.depth, true).await?;
        engine += rbd_row_bench::random_writes(&img, 4096, args.ops, args.depth, u64::from(r))
            .await?
            .iops();
    }
    let n = f64::from(args.rounds);
    println!("op                     ops/s   ratio to plain write");
    println!("plain write        {:>9.0}   1.00", plain / n);
    println!("write + omap key   {:>9.0}   {:.2}", omap / n, omap / plain);
    println!(
        "engine write       {:>9.0}   {:.2}",
        engine / n,
        engine / plain
    );
    img.close().await?;
    Ok(())
}

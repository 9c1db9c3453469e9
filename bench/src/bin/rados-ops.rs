//! What one client write costs at the RADOS layer, through row-rados, with
//! the same number of writes in flight: a plain 4 KiB write, the engine's
//! compound op (write + one omap key), and a full engine write — so a gap
//! between rbd-row and native RBD can be attributed to the backend op or to
//! the engine. Runs are interleaved; the table shows ratios to the plain write.

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use row_layer::backend::{Backend, WriteOp};
use row_layer::{CreateOptions, Store};
use row_rados::{ClusterConfig, RadosCluster};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

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

async fn run_ops(
    be: Arc<dyn Backend>,
    ops: u64,
    depth: usize,
    with_omap: bool,
) -> anyhow::Result<f64> {
    let sem = Arc::new(Semaphore::new(depth));
    let mut set = tokio::task::JoinSet::new();
    let data = Bytes::from(vec![7u8; 4096]);
    let start = Instant::now();
    for i in 0..ops {
        let permit = sem.clone().acquire_owned().await?;
        let be = be.clone();
        let d = data.clone();
        set.spawn(async move {
            let oid = format!("raw.{}", i % 128);
            let off = (i * 7919 % 1024) * 4096;
            let mut op = WriteOp::new().write(off, d);
            if with_omap {
                op = op.omap_set1(format!("{:06x}", off / 4096), Bytes::from_static(b"D"));
            }
            let r = be.operate(&oid, op).await;
            drop(permit);
            r
        });
        while let Some(r) = set.try_join_next() {
            r??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
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
    run_ops(be.clone(), 2000, args.depth, true).await?; // warm-up
    let (mut plain, mut omap, mut engine) = (0.0, 0.0, 0.0);
    for r in 0..args.rounds {
        plain += run_ops(be.clone(), args.ops, args.depth, false).await?;
        omap += run_ops(be.clone(), args.ops, args.depth, true).await?;
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

//! The headline benchmark: 4 KiB random-write IOPS as snapshots accumulate,
//! rbd-row (the engine on RADOS) against native RBD (`rbd bench`), side by
//! side on the same cluster in one run. Between steps, `--churn` random 4 KiB
//! writes follow each new snapshot (as in the reference measurements), so
//! native RBD has clones to make and rbd-row has epochs to resolve through.
//!
//! ```sh
//! tests/ceph/cluster.sh start && eval "$(tests/ceph/cluster.sh env)"
//! cargo run --release -p rbd-row-bench --bin snapshot-scaling -- --size 1G
//! ```
//! Prints one row per snapshot count with both IOPS and the ratio.

use anyhow::Context;
use clap::Parser;
use rbd_row_bench::rbd;
use row_layer::{CreateOptions, Store};
use row_rados::{ClusterConfig, RadosCluster};
use std::sync::Arc;

#[derive(Parser)]
struct Args {
    /// Image size (bytes or K/M/G suffix).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Pool to use.
    #[arg(long, default_value = "rbd")]
    pool: String,
    /// Snapshot counts to measure at.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,4,8,16,32,64")]
    steps: Vec<u32>,
    /// Writes per measurement.
    #[arg(long, default_value_t = 8000)]
    ops: u64,
    /// Writes in flight.
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Random writes after each snapshot (between steps).
    #[arg(long, default_value_t = 2000)]
    churn: u64,
    /// Skip filling the images first.
    #[arg(long)]
    no_fill: bool,
    /// Let native RBD use librbd's writeback cache. Off by default: rbd-row
    /// acknowledges a write only once RADOS has committed it, so the fair
    /// comparison is native RBD with `rbd_cache=false`.
    #[arg(long)]
    native_cache: bool,
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    Ok(num.parse::<u64>().context("size")? * mult)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = parse_size(&args.size)?;
    let tag = format!("{}", std::process::id());
    let native = format!("{}/bench-native-{tag}", args.pool);
    let ns = format!("bench-{tag}");

    let cluster = RadosCluster::connect(ClusterConfig::default())
        .await
        .context("connecting (set CEPH_CONF)")?;
    let store = Store::new(Arc::new(cluster.open_pool(&args.pool, &ns).await?));
    store.create("row", CreateOptions::with_size(size)).await?;
    let img = store.open("row").await?;
    // Control: the same writes, never snapshotted, to tell the cost of
    // snapshots from the cost of the OSD simply holding more data.
    store.create("ctl", CreateOptions::with_size(size)).await?;
    let ctl = store.open("ctl").await?;
    rbd(&["create", "--size", &format!("{}", size >> 20), &native])?;

    if !args.no_fill {
        eprintln!("filling both images ({} MiB each)...", size >> 20);
        rbd_row_bench::fill(&img, 4 << 20, 16).await?;
        rbd_row_bench::fill(&ctl, 4 << 20, 16).await?;
        rbd_row_bench::native_fill(&native, size)?;
    }
    println!(
        "# 4 KiB random writes, {} in flight, {} MiB image; native rbd_cache={}",
        args.depth,
        size >> 20,
        args.native_cache
    );
    println!("snapshots  native_iops  rbd_row_iops  ratio(rbd-row/native)  rbd_row_control_iops");
    let mut taken = 0u32;
    for &target in &args.steps {
        while taken < target {
            rbd(&["snap", "create", &format!("{native}@s{taken}")])?;
            img.snap_create(&format!("s{taken}")).await?;
            rbd_row_bench::native_random_writes(
                &native,
                args.churn,
                args.depth,
                args.native_cache,
            )?;
            rbd_row_bench::random_writes(&img, 4096, args.churn, args.depth, u64::from(taken))
                .await?;
            rbd_row_bench::random_writes(&ctl, 4096, args.churn, args.depth, u64::from(taken))
                .await?;
            taken += 1;
        }
        // Interleave the measurements so machine noise hits all of them.
        let (mut n, mut r, mut c) = (0.0, 0.0, 0.0);
        for round in 0..2u64 {
            let seed = 1000 * (round + 1) + u64::from(target);
            n += rbd_row_bench::native_random_writes(
                &native,
                args.ops,
                args.depth,
                args.native_cache,
            )? / 2.0;
            r += rbd_row_bench::random_writes(&img, 4096, args.ops, args.depth, seed)
                .await?
                .iops()
                / 2.0;
            c += rbd_row_bench::random_writes(&ctl, 4096, args.ops, args.depth, seed)
                .await?
                .iops()
                / 2.0;
        }
        println!(
            "{target:>9}  {n:>11.0}  {r:>12.0}  {:>21.2}  {c:>20.0}",
            r / n
        );
    }
    // Clean up.
    img.close().await?;
    ctl.close().await?;
    store.remove("ctl").await?;
    let _ = rbd(&["snap", "purge", &native]);
    let _ = rbd(&["rm", &native]);
    let img = store.open("row").await?;
    for s in img.snap_list() {
        img.snap_remove(&s.name).await?;
    }
    img.close().await?;
    store.remove("row").await?;
    Ok(())
}

//! The rolling-backup workload of ceph#49837, side by side: every round
//! takes snapshot n, writes random 4 KiB blocks, and removes snapshot n-K.
//! Native RBD trims removed snapshots' clones in the OSDs in the background;
//! rbd-row reclaims superseded grains when the snapshot is removed. Reports
//! per-round write IOPS of both and the time `snap rm` took, as ratios.
//!
//! ```sh
//! tests/ceph/cluster.sh start && eval "$(tests/ceph/cluster.sh env)"
//! cargo run --release -p rbd-row-bench --bin rolling-backups -- --rounds 30
//! ```

use anyhow::Context;
use clap::Parser;
use rbd_row_bench::rbd;
use row_layer::{CreateOptions, Store};
use row_rados::{ClusterConfig, RadosCluster};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Image size in MiB.
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    #[arg(long, default_value = "rbd")]
    pool: String,
    /// Rounds (snapshot, writes, remove).
    #[arg(long, default_value_t = 30)]
    rounds: u32,
    /// Snapshots kept (snapshot n-K is removed in round n).
    #[arg(long, default_value_t = 5)]
    keep: u32,
    /// Random 4 KiB writes per round.
    #[arg(long, default_value_t = 4000)]
    writes: u64,
    /// Writes in flight.
    #[arg(long, default_value_t = 16)]
    depth: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let size = a.size_mib << 20;
    let tag = std::process::id();
    let native = format!("{}/rolling-native-{tag}", a.pool);
    let cluster = RadosCluster::connect(ClusterConfig::default())
        .await
        .context("connecting (set CEPH_CONF)")?;
    let store = Store::new(Arc::new(
        cluster
            .open_pool(&a.pool, &format!("rolling-{tag}"))
            .await?,
    ));
    store.create("row", CreateOptions::with_size(size)).await?;
    let img = store.open("row").await?;
    rbd(&["create", "--size", &a.size_mib.to_string(), &native])?;
    eprintln!("filling both images ({} MiB each)...", a.size_mib);
    rbd_row_bench::fill(&img, 4 << 20, 16).await?;
    rbd_row_bench::native_fill(&native, size)?;
    println!(
        "# rolling backups: {} MiB, {} writes/round, keep {}, depth {}, native rbd_cache=false",
        a.size_mib, a.writes, a.keep, a.depth
    );
    println!("round  native_iops  rbd_row_iops  ratio  native_rm_ms  rbd_row_rm_ms");
    let (mut sum_n, mut sum_r) = (0.0, 0.0);
    for n in 0..a.rounds {
        rbd(&["snap", "create", &format!("{native}@s{n}")])?;
        img.snap_create(&format!("s{n}")).await?;
        let ni = rbd_row_bench::native_random_writes(&native, a.writes, a.depth, false)?;
        let ri = rbd_row_bench::random_writes(&img, 4096, a.writes, a.depth, u64::from(n))
            .await?
            .iops();
        let (mut nrm, mut rrm) = (0.0, 0.0);
        if n >= a.keep {
            let old = format!("s{}", n - a.keep);
            let t = Instant::now();
            rbd(&["snap", "rm", &format!("{native}@{old}")])?;
            nrm = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            img.snap_remove(&old).await?;
            rrm = t.elapsed().as_secs_f64() * 1e3;
        }
        sum_n += ni;
        sum_r += ri;
        println!(
            "{n:>5}  {ni:>11.0}  {ri:>12.0}  {:>5.2}  {nrm:>12.0}  {rrm:>13.0}",
            ri / ni
        );
    }
    println!(
        "mean   {:>11.0}  {:>12.0}  {:>5.2}",
        sum_n / f64::from(a.rounds),
        sum_r / f64::from(a.rounds),
        sum_r / sum_n
    );
    let u = img.space_usage()?;
    println!(
        "# rbd-row stored {} MiB for a {} MiB image with {} snapshots",
        u.stored >> 20,
        size >> 20,
        img.snap_list().len()
    );
    img.close().await?;
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

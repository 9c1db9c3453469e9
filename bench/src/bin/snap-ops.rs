//! Snapshot metadata operations against the number of snapshots an image
//! already has (issue 9: create, remove, rename and protect are O(1) in the
//! snapshot count, under 10 ms at 10,000 snapshots on RADOS).
//!
//! The image grows to each step's snapshot count (one 4 KiB write between
//! snapshots, so every snapshot pins its own epoch); at each step every
//! operation is timed `--repeats` times on a scratch snapshot, and open of
//! the image is timed too. The first step is the baseline: the ratio column
//! is the step's median over the first step's median.
//!
//! ```sh
//! tests/ceph/cluster.sh start && eval "$(tests/ceph/cluster.sh env)"
//! cargo run --release -p rbd-row-bench --bin snap-ops -- --steps 10,100,1000,10000
//! ```

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use rbd_row_bench::stats::Summary;
use row_layer::{CreateOptions, Image, Store};
use row_rados::{ClusterConfig, RadosCluster};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Snapshot counts to measure at, ascending.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    steps: Vec<u64>,
    /// Timed repetitions of each operation per step.
    #[arg(long, default_value_t = 15)]
    repeats: usize,
    #[arg(long, default_value = "rbd")]
    pool: String,
    /// Image size in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
}

/// The operations measured at each step, in order.
const OPS: [&str; 5] = ["create", "rename", "protect", "unprotect", "remove"];
/// The target for every operation at 10,000 snapshots.
const TARGET_MS: f64 = 10.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(a.repeats > 0, "--repeats must be positive");
    let cluster = RadosCluster::connect(ClusterConfig::default())
        .await
        .context("connecting (set CEPH_CONF)")?;
    let tag = std::process::id();
    let store = Store::new(Arc::new(
        cluster
            .open_pool(&a.pool, &format!("snapops-{tag}"))
            .await?,
    ));
    store
        .create("img", CreateOptions::with_size(a.size_mib << 20))
        .await?;
    let img = store.open("img").await?;
    println!(
        "# snapshot metadata ops on RADOS, {} repeats per cell, ms",
        a.repeats
    );
    println!("snapshots  op         median     min      max   ratio_to_first  target");
    let mut first: Vec<f64> = Vec::new();
    let mut have = 0u64;
    for &step in &a.steps {
        grow(&img, &mut have, step).await?;
        let mut row = Vec::new();
        for op in OPS {
            row.push(time_op(&img, op, a.repeats).await?);
        }
        row.push(time_open(&store, a.repeats).await?);
        if first.is_empty() {
            first = row.iter().map(|s| s.median).collect();
        }
        for (i, s) in row.iter().enumerate() {
            let name = OPS.get(i).copied().unwrap_or("open");
            let target = if name == "open" { 1000.0 } else { TARGET_MS };
            let verdict = if s.median <= target { "met" } else { "MISSED" };
            println!(
                "{step:>9}  {name:<9} {:>8.2} {:>8.2} {:>8.2}   {:>6.2}        <= {target} ms {verdict}",
                s.median,
                s.min,
                s.max,
                s.median / first[i].max(1e-9)
            );
        }
    }
    img.close().await?;
    Ok(())
}

/// Takes snapshots until the image has `want`, with a 4 KiB write before
/// each so that every snapshot pins its own epoch.
async fn grow(img: &Image, have: &mut u64, want: u64) -> anyhow::Result<()> {
    let slots = img.size() / 4096;
    let started = Instant::now();
    while *have < want {
        let block = (*have * 7919) % slots;
        img.write(block * 4096, Bytes::from(vec![(*have % 251) as u8; 4096]))
            .await?;
        img.snap_create(&format!("s{have}")).await?;
        *have += 1;
    }
    eprintln!(
        "{want} snapshots ({:.1} s to grow)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn time_op(img: &Image, op: &str, repeats: usize) -> anyhow::Result<Summary> {
    let mut ms = Vec::with_capacity(repeats);
    for r in 0..repeats {
        // Each repetition works on its own scratch snapshot "x".
        let elapsed = match op {
            "create" => {
                let t = timed(img.snap_create("x")).await?;
                img.snap_remove("x").await?;
                t
            }
            "rename" => {
                img.snap_create("x").await?;
                let t = timed(img.snap_rename("x", &format!("y{r}"))).await?;
                img.snap_remove(&format!("y{r}")).await?;
                t
            }
            "protect" => {
                img.snap_create("x").await?;
                let t = timed(img.snap_set_protected("x", true)).await?;
                img.snap_set_protected("x", false).await?;
                img.snap_remove("x").await?;
                t
            }
            "unprotect" => {
                img.snap_create("x").await?;
                img.snap_set_protected("x", true).await?;
                let t = timed(img.snap_set_protected("x", false)).await?;
                img.snap_remove("x").await?;
                t
            }
            "remove" => {
                img.snap_create("x").await?;
                timed(img.snap_remove("x")).await?
            }
            other => anyhow::bail!("unknown op {other}"),
        };
        ms.push(elapsed);
    }
    Summary::of(&ms).context("no samples")
}

async fn time_open(store: &Store, repeats: usize) -> anyhow::Result<Summary> {
    let mut ms = Vec::with_capacity(repeats);
    for _ in 0..repeats.min(5) {
        let t = Instant::now();
        let view = store.open_head_read_only("img").await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        view.close().await?;
    }
    Summary::of(&ms).context("no samples")
}

async fn timed<T, F: Future<Output = row_layer::Result<T>>>(f: F) -> anyhow::Result<f64> {
    let t = Instant::now();
    f.await?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

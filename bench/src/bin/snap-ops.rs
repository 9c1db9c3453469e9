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
use rbd_row_bench::results::{Cell, Report, Row, Target};
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
    /// Measure image "img" left in this pool namespace by an earlier run
    /// (its snapshots count towards the steps) instead of a new image.
    #[arg(long)]
    namespace: Option<String>,
    /// Do not write bench/results/snap-ops.md.
    #[arg(long)]
    no_record: bool,
}

/// The operations measured at each step, in order.
const OPS: [&str; 5] = ["create", "rename", "protect", "unprotect", "remove"];
/// The target for every operation at 10,000 snapshots.
const TARGET_MS: f64 = 10.0;
/// The target for open at 10,000 snapshots.
const OPEN_TARGET_MS: f64 = 1000.0;
/// The snapshot count the targets are set at.
const TARGET_AT: u64 = 10_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(a.repeats > 0, "--repeats must be positive");
    let cluster = RadosCluster::connect(ClusterConfig::default())
        .await
        .context("connecting (set CEPH_CONF)")?;
    let ns = (a.namespace.clone()).unwrap_or_else(|| format!("snapops-{}", std::process::id()));
    eprintln!(
        "pool {} namespace {ns} (--namespace {ns} measures it again)",
        a.pool
    );
    let store = Store::new(Arc::new(cluster.open_pool(&a.pool, &ns).await?));
    if a.namespace.is_none() {
        store
            .create("img", CreateOptions::with_size(a.size_mib << 20))
            .await?;
    }
    let img = store.open("img").await?;
    println!(
        "# snapshot metadata ops on RADOS, {} repeats per cell, ms",
        a.repeats
    );
    println!("snapshots  op         median     min      max   ratio_to_first  target");
    let mut first: Vec<f64> = Vec::new();
    let mut have = img.snap_list().len() as u64;
    let mut report = Report::default();
    for &step in &a.steps {
        grow(&img, &mut have, step).await?;
        let mut row = Vec::new();
        let mut samples = Vec::new();
        for op in OPS {
            let ms = time_op(&img, op, a.repeats).await?;
            row.push(Summary::of(&ms).context("no samples")?);
            samples.push(ms);
        }
        // Open is measured after a background pass (reclaim, then the
        // record pack) has run, as it has on an image left idle.
        let t = Instant::now();
        img.reclaim().await?;
        let pass_s = t.elapsed().as_secs_f64();
        let open_ms = time_open(&store, a.repeats).await?;
        row.push(Summary::of(&open_ms).context("no samples")?);
        samples.push(open_ms);
        if first.is_empty() {
            first = row.iter().map(|s| s.median).collect();
        }
        for (i, s) in row.iter().enumerate() {
            let name = OPS.get(i).copied().unwrap_or("open");
            let target = if name == "open" {
                OPEN_TARGET_MS
            } else {
                TARGET_MS
            };
            let verdict = if s.median <= target { "met" } else { "MISSED" };
            println!(
                "{step:>9}  {name:<9} {:>8.2} {:>8.2} {:>8.2}   {:>6.2}        <= {target} ms {verdict}",
                s.median,
                s.min,
                s.max,
                s.median / first[i].max(1e-9)
            );
            let mut r = Row::new(
                "snapshot metadata ops",
                &format!("{name} at {step} snapshots"),
                "ms",
                Cell::from_samples(&samples[i]),
            );
            if step == TARGET_AT {
                let text = format!("at most {target} ms at {TARGET_AT} snapshots");
                r = r.target(Target::value(&text, false, target));
            }
            report.rows.push(r);
        }
        report.notes.push((
            "snapshot metadata ops".into(),
            format!(
                "At {step} snapshots the background pass before the open timings (reclaim of \
                 the scratch snapshots' epochs, then the record pack) took {pass_s:.1} s."
            ),
        ));
    }
    if !a.no_record {
        report.about.push((
            "Image".into(),
            format!(
                "{} MiB, one 4 KiB write before each snapshot; {} repeats per cell (open: {})",
                a.size_mib,
                a.repeats,
                a.repeats.min(5)
            ),
        ));
        let title = "Snapshot metadata operations against the snapshot count (issue 9)";
        let path = rbd_row_bench::record::write("snap-ops", title, true, &report)?;
        eprintln!("record written to {}", path.display());
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

async fn time_op(img: &Image, op: &str, repeats: usize) -> anyhow::Result<Vec<f64>> {
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
    Ok(ms)
}

async fn time_open(store: &Store, repeats: usize) -> anyhow::Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(repeats);
    for _ in 0..repeats.min(5) {
        let t = Instant::now();
        let view = store.open_head_read_only("img").await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        view.close().await?;
    }
    Ok(ms)
}

async fn timed<T, F: Future<Output = row_layer::Result<T>>>(f: F) -> anyhow::Result<f64> {
    let t = Instant::now();
    f.await?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

//! Benchmark support: a random-write workload on a row-layer image with a
//! bounded number of writes in flight, and parsing of `rbd bench` output, so
//! that rbd-row and native RBD are measured side by side in one run.
#![warn(clippy::unwrap_used)]

pub mod ceph;
pub mod counts;
pub mod fio;
pub mod gateway;
pub mod plot;
pub mod proc;
pub mod raw;
pub mod record;
pub mod results;
pub mod stats;
pub mod sysinfo;

use bytes::Bytes;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use row_layer::Image;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Result of one timed run.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Operations completed.
    pub ops: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Throughput {
    /// Operations per second.
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `ops` random, `io_size`-aligned writes of `io_size` bytes with at most
/// `depth` in flight, like `rbd bench --io-type write --io-pattern rand`.
pub async fn random_writes(
    img: &Image,
    io_size: u64,
    ops: u64,
    depth: usize,
    seed: u64,
) -> anyhow::Result<Throughput> {
    let payload = Bytes::from(
        (0..io_size)
            .map(|i| (i * 31 + seed) as u8)
            .collect::<Vec<u8>>(),
    );
    random_ops(img, io_size, ops, depth, seed, move |img, off| {
        let data = payload.clone();
        async move { img.write(off, data).await }
    })
    .await
}

/// `ops` random, `io_size`-aligned reads of `io_size` bytes with at most
/// `depth` in flight, straight on the engine handle (no NBD): the engine's
/// own read cost, like `rbd bench --io-type read --io-pattern rand`.
pub async fn random_reads(
    img: &Image,
    io_size: u64,
    ops: u64,
    depth: usize,
    seed: u64,
) -> anyhow::Result<Throughput> {
    random_ops(img, io_size, ops, depth, seed, move |img, off| async move {
        img.read(off, io_size).await.map(|_| ())
    })
    .await
}

/// `ops` calls of `op` at random `io_size`-aligned offsets, at most `depth`
/// in flight.
async fn random_ops<F, Fut>(
    img: &Image,
    io_size: u64,
    ops: u64,
    depth: usize,
    seed: u64,
    op: F,
) -> anyhow::Result<Throughput>
where
    F: Fn(Image, u64) -> Fut,
    Fut: std::future::Future<Output = row_layer::Result<()>> + Send + 'static,
{
    let slots = img.size() / io_size;
    anyhow::ensure!(slots > 0, "image smaller than one I/O");
    let mut rng = SmallRng::seed_from_u64(seed);
    let sem = Arc::new(Semaphore::new(depth));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..ops {
        let permit = sem.clone().acquire_owned().await?;
        let io = op(img.clone(), rng.gen_range(0..slots) * io_size);
        tasks.spawn(async move {
            let r = io.await;
            drop(permit);
            r
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(Throughput {
        ops,
        elapsed: start.elapsed(),
    })
}

/// Removes every snapshot of image `name`, then the image.
pub async fn remove_row_image(store: &row_layer::Store, name: &str) -> anyhow::Result<()> {
    let img = store.open(name).await?;
    for s in img.snap_list() {
        img.snap_remove(&s.name).await?;
    }
    img.close().await?;
    store.remove(name).await?;
    Ok(())
}

/// Sequential writes of the whole image (to fill it before measuring).
pub async fn fill(img: &Image, chunk: u64, depth: usize) -> anyhow::Result<()> {
    let sem = Arc::new(Semaphore::new(depth));
    let mut tasks = tokio::task::JoinSet::new();
    let data = Bytes::from(vec![0x5a; chunk as usize]);
    let mut off = 0;
    while off < img.size() {
        let len = chunk.min(img.size() - off);
        let permit = sem.clone().acquire_owned().await?;
        let img = img.clone();
        let d = data.slice(..len as usize);
        tasks.spawn(async move {
            let r = img.write(off, d).await;
            drop(permit);
            r
        });
        off += len;
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    img.flush().await?;
    Ok(())
}

/// Runs the native `rbd` tool, returning its stdout (an error with its
/// stderr when it fails, [`proc::TimedOut`] past the default deadline).
pub fn rbd(args: &[&str]) -> anyhow::Result<String> {
    ceph::rbd(args)
}

/// Native `rbd bench` of `ops` random 4 KiB writes with `depth` in flight
/// (`cache`: librbd's writeback cache), returning its ops/sec.
pub fn native_random_writes(
    spec: &str,
    ops: u64,
    depth: usize,
    cache: bool,
) -> anyhow::Result<f64> {
    let total = (ops * 4096).to_string();
    let threads = depth.to_string();
    let cache = format!("--rbd_cache={cache}");
    let out = rbd(&[
        "bench",
        &cache,
        "--io-type",
        "write",
        "--io-size",
        "4K",
        "--io-threads",
        &threads,
        "--io-total",
        &total,
        "--io-pattern",
        "rand",
        spec,
    ])?;
    parse_rbd_bench(&out).ok_or_else(|| anyhow::anyhow!("cannot parse rbd bench output"))
}

/// Fills native image `spec` of `size` bytes sequentially (4 MiB writes,
/// 16 in flight, no cache), as [`fill`] does for an rbd-row image.
pub fn native_fill(spec: &str, size: u64) -> anyhow::Result<()> {
    let total = size.to_string();
    rbd(&[
        "bench",
        "--rbd_cache=false",
        "--io-type",
        "write",
        "--io-size",
        "4M",
        "--io-threads",
        "16",
        "--io-total",
        &total,
        "--io-pattern",
        "seq",
        spec,
    ])
    .map(|_| ())
}

/// Parses the summary line of `rbd bench`
/// (`elapsed: 10   ops: 2000  ops/sec: 199.9  bytes/sec: 818768.2`).
pub fn parse_rbd_bench(output: &str) -> Option<f64> {
    let line = output.lines().rev().find(|l| l.contains("ops/sec:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "ops/sec:" {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_rbd_bench_summary() {
        let out = "  SEC       OPS   OPS/SEC   BYTES/SEC\n    1      5000   5010.2    20 MiB/s\n\
                   elapsed: 1   ops: 5000   ops/sec: 4967.52   bytes/sec: 19 MiB/s\n";
        assert_eq!(super::parse_rbd_bench(out), Some(4967.52));
        assert_eq!(super::parse_rbd_bench("nothing"), None);
    }

    /// The shared random-I/O loop issues exactly `ops` operations of the
    /// right kind: on a filled image, one backend read per 4 KiB read.
    #[tokio::test]
    async fn random_writes_and_reads_issue_exactly_ops() {
        use row_layer::backend::fault::FaultBackend;
        use row_layer::backend::mem::MemBackend;
        use row_layer::backend::Backend;
        use std::sync::Arc;
        let fault = Arc::new(FaultBackend::new(Arc::new(MemBackend::new())));
        let store = row_layer::Store::new(fault.clone() as Arc<dyn Backend>);
        let opts = row_layer::CreateOptions {
            size: 4 << 20,
            object_size: 4 << 20,
            grain_size: 4096,
        };
        store.create("img", opts).await.expect("create");
        let img = store.open("img").await.expect("open");
        let w = super::random_writes(&img, 4096, 64, 8, 7)
            .await
            .expect("writes");
        assert_eq!(w.ops, 64);
        super::fill(&img, 1 << 20, 4).await.expect("fill");
        let before = fault.counts();
        let r = super::random_reads(&img, 4096, 32, 8, 9)
            .await
            .expect("reads");
        assert_eq!(r.ops, 32);
        let d = fault.counts() - before;
        assert_eq!((d.reads, d.mutations), (32, 0), "{d:?}");
        let _ = super::remove_row_image(&store, "img").await;
    }
}

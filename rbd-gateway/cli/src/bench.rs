//! `bench`: in-process I/O benchmark printing rbd bench's lines.

use crate::cli::IoType;
use crate::ctx::{finish, Ctx};
use crate::error::{CliError, CliResult};
use crate::size::format_bytes;
use crate::spec::ImageSpec;
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Parameters of a run.
pub(crate) struct BenchArgs {
    pub(crate) io_type: IoType,
    pub(crate) io_size: u64,
    pub(crate) io_threads: usize,
    pub(crate) io_total: u64,
    pub(crate) random: bool,
    /// Name of the pattern in the header line (rbd's spelling).
    pub(crate) pattern: &'static str,
    pub(crate) rw_mix_read: u32,
}

fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", format_bytes(bytes_per_sec.max(0.0) as u64))
}

fn fmt_f(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Largest single bench I/O.
const MAX_IO_SIZE: u64 = 256 << 20;
/// Largest total of bench I/O buffers in flight.
const MAX_IN_FLIGHT: u64 = 1 << 30;

pub(crate) async fn bench(
    ctx: &Ctx,
    spec: &ImageSpec,
    a: BenchArgs,
    out: &mut dyn Write,
) -> CliResult<()> {
    let (_, img) = ctx.open_head(spec).await?;
    let size = img.size();
    if a.io_size > size {
        let r = Err(CliError::usage("rbd-row: io-size larger than the image"));
        return finish(img, r).await;
    }
    // Every thread holds one buffer of io-size: refuse sizes this process
    // could not allocate instead of aborting on the allocation.
    if a.io_size > MAX_IO_SIZE || a.io_size.saturating_mul(a.io_threads as u64) > MAX_IN_FLIGHT {
        let r = Err(CliError::usage(format!(
            "rbd-row: io-size {} with {} io-threads is too large (at most {} MiB per I/O and {} MiB in flight)",
            a.io_size,
            a.io_threads,
            MAX_IO_SIZE >> 20,
            MAX_IN_FLIGHT >> 20
        )));
        return finish(img, r).await;
    }
    let w = |out: &mut dyn Write, s: String| {
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
    };
    let kind = match a.io_type {
        IoType::Read => "read",
        IoType::Write => "write",
        IoType::Readwrite | IoType::Rw => "readwrite",
    };
    w(
        out,
        format!(
            "bench  type {kind} io_size {} io_threads {} bytes {} pattern {}\n",
            a.io_size, a.io_threads, a.io_total, a.pattern
        ),
    );
    let ops_total = a.io_total / a.io_size;
    let slots = (size / a.io_size).max(1);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let payload = Bytes::from(vec![0xa5u8; a.io_size as usize]);
    for t in 0..a.io_threads {
        let (img, next, done, payload) = (img.clone(), next.clone(), done.clone(), payload.clone());
        let (random, io_size, mix, io_type) = (a.random, a.io_size, a.rw_mix_read, a.io_type);
        set.spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(t as u64 + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops_total {
                    return Ok::<(), row_layer::Error>(());
                }
                let slot = if random {
                    rng.gen_range(0..slots)
                } else {
                    i % slots
                };
                let off = slot * io_size;
                let read = match io_type {
                    IoType::Read => true,
                    IoType::Write => false,
                    _ => rng.gen_range(0..100) < mix,
                };
                if read {
                    img.read(off, io_size).await?;
                } else {
                    img.write(off, payload.clone()).await?;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    w(out, "  SEC       OPS   OPS/SEC   BYTES/SEC\n".into());
    let mut last = (0u64, Instant::now());
    let mut sec = 0;
    let mut result = Ok(());
    loop {
        tokio::select! {
            j = set.join_next() => match j {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => { result = Err(CliError::row("rbd-row: bench failed", &e)); set.abort_all(); }
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => { result = Err(CliError::msg(5, format!("rbd-row: bench failed: {e}"))); }
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                sec += 1;
                let d = done.load(Ordering::Relaxed);
                let el = last.1.elapsed().as_secs_f64().max(1e-9);
                let ops = (d - last.0) as f64 / el;
                w(out, format!("{sec:>5} {d:>9} {:>9} {:>11}\n", fmt_f(ops), rate(ops * a.io_size as f64)));
                last = (d, Instant::now());
            }
        }
    }
    if result.is_ok() && !matches!(a.io_type, IoType::Read) {
        result = img
            .flush()
            .await
            .map_err(|e| CliError::row("rbd-row: bench failed", &e));
    }
    let el = start.elapsed().as_secs_f64();
    let ops = done.load(Ordering::Relaxed);
    if result.is_ok() {
        let ops_s = ops as f64 / el.max(1e-9);
        w(
            out,
            format!(
                "elapsed: {}   ops: {ops}   ops/sec: {}   bytes/sec: {}\n",
                el as u64,
                fmt_f(ops_s),
                rate(ops_s * a.io_size as f64)
            ),
        );
    }
    finish(img, result).await
}

//! Issue 9's first target on the in-memory backend: a rolling "snapshot n,
//! random writes, remove n-5" schedule, run for many rounds, must keep the
//! per-write cost (backend ops and CPU) of its last rounds within 5% of its
//! early rounds, and its stored data bounded by what the live views need.
//!
//! A no-snapshot control image receives the same writes in the same rounds,
//! alternating with the rolling image, so machine drift hits both; the
//! figures printed are ratios (round N / round 10, and image / control).
//! The in-memory backend isolates the engine's own cost from RADOS.
//!
//! The reclaimer is settled before every timed window: after the round's
//! snapshot create and remove, `Image::reclaim` runs the pass and is timed
//! on its own (its own column), so no background pass lands among the
//! timed writes. Each printed figure covers the `--window` rounds ending
//! at that round (CPU per write: the median round, measured as the
//! thread's own CPU time; the rest: means); the baseline is the window
//! starting at round 10. Pick `--window` dividing `rounds - 10` so that
//! the last window ends at the last round.
//!
//! The record (`bench/results/rolling-mem.md`) holds the table and the last
//! window's ratios to the baseline against the 5% target.

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use rbd_row_bench::results::{Cell, Report, Row, Target};
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
    /// Rounds averaged per printed figure.
    #[arg(long, default_value_t = 10)]
    window: u64,
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
            grains += (page.iter())
                .filter(|(_, v)| v.as_ref() == b"D" || v.as_ref() == b"M")
                .count() as u64;
        }
    }
    Ok((objects.len() as u64, grains))
}

/// CPU time this thread has run, in ns (`CLOCK_THREAD_CPUTIME_ID`): the
/// runtime is single-threaded and the in-memory backend synchronous, so
/// this is the engine's and the backend's CPU, without the time the thread
/// waited for a core on a busy machine. (`/proc/thread-self/schedstat`
/// only advances at scheduler ticks: most rounds read 0.)
fn thread_cpu_ns() -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    anyhow::ensure!(
        rc == 0,
        "clock_gettime: {}",
        std::io::Error::last_os_error()
    );
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// One round's writes and a flush (both sides make their writes durable,
/// so the in-memory backend's cost of applying them to its durable copy is
/// in both windows, and its queue of unflushed ops stays bounded); returns
/// (backend ops per write, CPU microseconds per write, wall microseconds
/// per write).
async fn writes(s: &Side, rng: &mut SmallRng, n: u64, size: u64) -> Result<(f64, f64, f64)> {
    let before = s.fault.counts();
    let t = Instant::now();
    let cpu = thread_cpu_ns()?;
    for _ in 0..n {
        let off = rng.gen_range(0..size / 4096) * 4096;
        s.img
            .write(off, Bytes::from(vec![rng.gen::<u8>(); 4096]))
            .await?;
    }
    s.img.flush().await?;
    let cpu_us = (thread_cpu_ns()? - cpu) as f64 / 1e3 / n as f64;
    let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let ops = (s.fault.counts() - before).total() as f64 / n as f64;
    Ok((ops, cpu_us, us))
}

/// Per-round figures, summed over a window.
#[derive(Default, Clone, Copy)]
struct Acc {
    n: f64,
    ops: f64,
    us: f64,
    control_us: f64,
    wall_us: f64,
    control_wall_us: f64,
    snap_us: f64,
    reclaim_us: f64,
}

impl Acc {
    fn add(
        &mut self,
        ops: f64,
        (us, cus): (f64, f64),
        (wall, cwall): (f64, f64),
        snap_us: f64,
        reclaim_us: f64,
    ) {
        self.n += 1.0;
        self.ops += ops;
        self.us += us;
        self.control_us += cus;
        self.wall_us += wall;
        self.control_wall_us += cwall;
        self.snap_us += snap_us;
        self.reclaim_us += reclaim_us;
    }
    fn mean(&self) -> Acc {
        let n = self.n.max(1.0);
        Acc {
            n: self.n,
            ops: self.ops / n,
            us: self.us / n,
            control_us: self.control_us / n,
            wall_us: self.wall_us / n,
            control_wall_us: self.control_wall_us / n,
            snap_us: self.snap_us / n,
            reclaim_us: self.reclaim_us / n,
        }
    }
}

fn median(xs: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let size = a.size_mib << 20;
    let image = side(size).await?;
    let control = side(size).await?;
    let mut rng = SmallRng::seed_from_u64(1);
    let mut base: Option<Acc> = None;
    let mut acc = Acc::default();
    let mut cpu_rounds: Vec<(f64, f64)> = Vec::new();
    anyhow::ensure!(
        a.window > 0 && a.every > 0,
        "--window and --every must be positive"
    );
    let started = Instant::now();
    println!(
        "# rolling-mem: {} rounds, {} random 4 KiB writes/round on {} MiB, create n / remove n-5; figures are over the {} rounds ending at the round (CPU: the median round; the rest: means), against the first such window (rounds 10 to {})",
        a.rounds, a.writes, a.size_mib, a.window, 9 + a.window
    );
    let mut table = String::new();
    let mut last: Option<(u64, Acc, Acc)> = None;
    let header = "| round | ops/write | CPU µs/write | CPU µs/write control | image/control | vs baseline: ops/write, CPU µs/write, image/control (target ≤ 1.05) | wall µs/write (image, control) | snap create+remove µs | reclaim µs (untimed) | epochs | data objects | stored grains | control grains | elapsed s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";
    println!("{header}");
    table.push_str(header);
    table.push('\n');
    for r in 0..a.rounds {
        let t = Instant::now();
        image.img.snap_create(&format!("s{r}")).await?;
        if r >= 5 {
            image.img.snap_remove(&format!("s{}", r - 5)).await?;
        }
        let snap_us = t.elapsed().as_secs_f64() * 1e6;
        // Settle the reclaimer outside the timed window.
        let t = Instant::now();
        image.img.reclaim().await?;
        let reclaim_us = t.elapsed().as_secs_f64() * 1e6;
        let (ops, us, wall) = writes(&image, &mut rng, a.writes, size).await?;
        let (_, cus, cwall) = writes(&control, &mut rng, a.writes, size).await?;
        if r < 10 {
            continue;
        }
        acc.add(ops, (us, cus), (wall, cwall), snap_us, reclaim_us);
        cpu_rounds.push((us, cus));
        // Windows are rounds [10 + k·w, 10 + (k+1)·w); the first is the baseline.
        if (r + 1 - 10) % a.window != 0 {
            continue;
        }
        let mut m = acc.mean();
        acc = Acc::default();
        // CPU: the median round, so one preempted or cache-cold round on a
        // shared machine does not move the window.
        m.us = median(cpu_rounds.iter().map(|c| c.0));
        m.control_us = median(cpu_rounds.iter().map(|c| c.1));
        cpu_rounds.clear();
        let first = base.is_none();
        let b = *base.get_or_insert(m);
        let crossed = (r + 1) / a.every > (r + 1 - a.window) / a.every;
        if !(first || crossed || r + a.window >= a.rounds) {
            continue;
        }
        let epochs = image.img.header().epochs.len();
        let (objects, grains) = stored(&image.mem).await?;
        let (_, control_grains) = stored(&control.mem).await?;
        let line = format!(
            "| {r} | {:.3} | {:.1} | {:.1} | {:.2} | {:.3}, {:.3}, {:.3} | {:.1}, {:.1} | {:.0} | {:.0} | {epochs} | {objects} | {grains} | {control_grains} | {:.0} |",
            m.ops,
            m.us,
            m.control_us,
            m.us / m.control_us,
            m.ops / b.ops,
            m.us / b.us,
            (m.us / m.control_us) / (b.us / b.control_us),
            m.wall_us,
            m.control_wall_us,
            m.snap_us,
            m.reclaim_us,
            started.elapsed().as_secs_f64(),
        );
        println!("{line}");
        table.push_str(&line);
        table.push('\n');
        last = Some((r, m, b));
    }
    let Some((r, m, b)) = last else {
        anyhow::bail!("no window finished: --rounds must exceed 10 + --window");
    };
    record(&a, table, r, m, b)
}

const GROUP: &str = "Rolling schedule on the in-memory backend: the last window against rounds 10+";

fn record(a: &Args, table: String, r: u64, m: Acc, b: Acc) -> Result<()> {
    let mut rep = Report::default();
    rep.about.push((
        "Workload".into(),
        format!(
            "{} rounds of snapshot n / remove n-5 with {} random 4 KiB writes per round on a {} MiB image and on a no-snapshot control (in-memory backend); each figure covers {} rounds; baseline: rounds 10 to {}",
            a.rounds, a.writes, a.size_mib, a.window, 9 + a.window
        ),
    ));
    let one = |x: f64| Cell::from_samples(&[x]);
    let target = || Target::value("≤ 1.05 (issue 9: within 5% of round 10)", false, 1.05);
    rep.rows.push(
        Row::new(
            GROUP,
            &format!(
                "backend ops per write, round {r} / round 10 ({:.3} / {:.3})",
                m.ops, b.ops
            ),
            "ratio",
            one(m.ops / b.ops),
        )
        .target(target()),
    );
    rep.rows.push(
        Row::new(GROUP, &format!("CPU per write (thread CPU time, median round), round {r} / round 10 ({:.2} / {:.2} µs)", m.us, b.us), "ratio", one(m.us / b.us))
            .target(target()),
    );
    rep.rows.push(Row::new(
        GROUP,
        &format!("CPU per write relative to the control, round {r} / round 10"),
        "ratio",
        one((m.us / m.control_us) / (b.us / b.control_us)),
    ));
    rep.sections.push(("Windows".into(), table));
    let title = format!("rolling-mem: {} rounds on the in-memory backend", a.rounds);
    let path = rbd_row_bench::record::write("rolling-mem", &title, false, &rep)?;
    eprintln!("record written to {}", path.display());
    Ok(())
}

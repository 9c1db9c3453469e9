//! The gateway's memory as a thin image fills (issue 9: "the resident map is
//! at most 64 MiB per TiB written at 4 KiB grains; report the gateway's RSS
//! for a 1 TiB thin image with 1% and with 100% written"). The real
//! `rbd-gateway` process (built next to this bench) serves a thin image on
//! Ceph; fio's nbd engine writes random, block-aligned `--bs` blocks over the
//! whole image until each `--steps` fraction of it is written, and the
//! gateway's VmRSS is read after each step. Blocks of 64 KiB cost the map
//! what 16 scattered 4 KiB writes would (a roaring array container holds
//! 2 B per grain until 4096 of its 65,536 grains are set) at a fraction of
//! the I/Os, so a percent of a TiB is written in minutes. The growth between
//! the first and the last step, scaled to a TiB written, is checked against
//! the target. The record goes to `bench/results/gateway-memory.md`.
//!
//! ```sh
//! tests/ceph/cluster.sh start && eval "$(tests/ceph/cluster.sh env)"
//! cargo build --release -p rbd-gateway -p rbd-row-bench
//! target/release/gateway-memory --steps 0.25,0.5,1
//! ```

use anyhow::{anyhow, Context};
use clap::Parser;
use rbd_row_bench::fio::{Amount, FioJob, FioTarget};
use rbd_row_bench::gateway;
use rbd_row_bench::results::{Cell, Report, Row, Target};
use row_layer::CreateOptions;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser, Clone)]
struct Args {
    /// Pool of the image.
    #[arg(long, default_value = "rbd")]
    pool: String,
    /// Image size (K/M/G/T suffixes).
    #[arg(long, default_value = "1T")]
    size: String,
    /// Percent of the image written when RSS is read, ascending.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,1")]
    steps: Vec<f64>,
    /// Bytes per write (K/M suffixes), a multiple of the 4 KiB grain.
    #[arg(long, default_value = "64K")]
    bs: String,
    /// Writes in flight.
    #[arg(long, default_value_t = 16)]
    depth: usize,
}

const GROUP: &str = "Gateway memory, thin image written at random";
const MIB: f64 = 1048576.0;
const TIB: f64 = 1099511627776.0;

/// Starts `rbd-gateway` (next to this executable) exporting `image`.
fn start_gateway(pool: &str, image: &str, port: u16) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", exe.display()))?
        .join("rbd-gateway");
    let conf = std::env::var("CEPH_CONF").context("set CEPH_CONF (tests/ceph/cluster.sh env)")?;
    Command::new(&bin)
        .args(["-c", &conf, "--pool", pool, "--export", image])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (cargo build --release -p rbd-gateway)",
                bin.display()
            )
        })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A write job of `n` random `bs` blocks over the image.
fn job(uri: &str, size: u64, bs: u64, depth: usize, n: u64, seed: u64) -> FioJob {
    FioJob {
        target: FioTarget::Nbd { uri: uri.into() },
        rw: "randwrite",
        bs,
        iodepth: depth,
        size,
        amount: Amount::Ios(n),
        seed,
    }
}

/// RSS samples after each step: (bytes written, RSS bytes, seconds the step took).
fn measure(
    a: &Args,
    uri: &str,
    size: u64,
    bs: u64,
    pid: u32,
) -> anyhow::Result<Vec<(u64, u64, f64)>> {
    let mut tries = 0;
    while let Err(e) = job(uri, size, 4096, 1, 1, 1).run() {
        tries += 1;
        anyhow::ensure!(tries < 80, "gateway never answered: {e:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut out = vec![(4096, rbd_row_bench::sysinfo::rss(pid)?, 0.0)];
    let mut written = 0u64;
    for (i, pct) in a.steps.iter().enumerate() {
        let goal = (size as f64 * pct / 100.0) as u64 / bs * bs;
        let n = goal.saturating_sub(written) / bs;
        let t = Instant::now();
        let mut j = job(uri, size, bs, a.depth, n, 100 + i as u64);
        j.amount = Amount::Ios(n.max(1));
        j.run()?;
        written += n * bs;
        std::thread::sleep(Duration::from_secs(1));
        let rss = rbd_row_bench::sysinfo::rss(pid)?;
        eprintln!(
            "{pct}% ({} MiB) written in {:.0} s: RSS {:.1} MiB",
            written >> 20,
            t.elapsed().as_secs_f64(),
            rss as f64 / MIB
        );
        out.push((written, rss, t.elapsed().as_secs_f64()));
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let parse = |s: &str| rbd_row_cli::size::parse_size(s, 1).map_err(|e| anyhow!("{}", e.message));
    let (size, bs) = (parse(&a.size)?, parse(&a.bs)?);
    anyhow::ensure!(bs % 4096 == 0 && bs > 0, "--bs must be a multiple of 4 KiB");
    anyhow::ensure!(
        !a.steps.is_empty() && a.steps.windows(2).all(|w| w[0] < w[1]),
        "--steps must ascend"
    );
    let stores = gateway::ceph_stores()?;
    let store = gateway::store(&stores, &a.pool).await?;
    let name = format!("gwmem-{}", std::process::id());
    store.create(&name, CreateOptions::with_size(size)).await?;
    let port = free_port()?;
    let mut child = start_gateway(&a.pool, &name, port)?;
    let uri = format!("nbd://127.0.0.1:{port}/{name}");
    let pid = child.id();
    let r = {
        let (a2, uri2) = (a.clone(), uri.clone());
        tokio::task::spawn_blocking(move || measure(&a2, &uri2, size, bs, pid)).await?
    };
    // SIGTERM: the gateway drains, flushes and releases the image.
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
    eprintln!("removing the image...");
    store.remove(&name).await?;
    let samples = r?;
    let report = report(&a, size, bs, &samples);
    let title = format!("gateway-memory: rbd-gateway RSS on a {} thin image", a.size);
    let path = rbd_row_bench::record::write("gateway-memory", &title, true, &report)?;
    println!("{}", std::fs::read_to_string(&path)?);
    eprintln!("record written to {}", path.display());
    Ok(())
}

fn report(a: &Args, size: u64, bs: u64, s: &[(u64, u64, f64)]) -> Report {
    let mut rep = Report::default();
    rep.about.push((
        "Workload".into(),
        format!(
            "one thin image of {} ({size} bytes) exported by the real rbd-gateway process; fio's nbd engine writes random {}-byte blocks ({} in flight, aligned, without a random map, so a block may land on one already written: at 1% written that is about 1% of them) until each step's share is written; VmRSS read 1 s after each step",
            a.size, bs, a.depth
        ),
    ));
    for (written, rss, secs) in s {
        let pct = *written as f64 / size as f64 * 100.0;
        rep.rows.push(Row::new(
            GROUP,
            &format!(
                "gateway RSS with {pct:.3}% written ({} MiB; the step took {secs:.0} s)",
                written >> 20
            ),
            "MiB",
            Cell::from_samples(&[*rss as f64 / MIB]),
        ));
    }
    if let (Some(first), Some(last)) = (s.get(1), s.last()) {
        if last.0 > first.0 {
            let per_tib = (last.1 as f64 - first.1 as f64) / (last.0 - first.0) as f64 * TIB / MIB;
            rep.rows.push(
                Row::new(
                    GROUP,
                    "RSS growth per TiB written, between the first and the last step (scaled)",
                    "MiB/TiB",
                    Cell::from_samples(&[per_tib]),
                )
                .target(Target::value(
                    "≤ 64 MiB per TiB written (issue 9)",
                    false,
                    64.0,
                )),
            );
        }
    }
    rep.rows.push(Row::not_run(
        GROUP,
        "gateway RSS with 100% of a 1 TiB image written",
        "MiB",
        "a written TiB cannot be stored on this machine (one 24 GiB OSD file, about 45 GB of free disk)",
    ));
    rep
}

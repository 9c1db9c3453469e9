//! Random 4 KiB reads through the NBD gateway as snapshots accumulate
//! (issue 9 item 1): one gateway serves an image that gets snapshots and a
//! control image that never does, both with the same writes; the reads
//! alternate between the two so machine noise hits both, and the printed
//! ratio image/control per snapshot count shows what snapshots cost on the
//! gateway's read path (structured replies, so every read asks the export
//! for `base:allocation` to send holes). The same reads straight on the
//! engine handles give the engine's own ratio alongside.
//!
//! ```sh
//! # local store in a temporary directory (no Ceph needed)
//! cargo run -p rbd-row-bench --bin gateway-reads -- --size 1G --steps 0,4,16
//! # Ceph (same store flags as rbd-gateway)
//! cargo run --release -p rbd-row-bench --bin gateway-reads -- -c /etc/ceph/ceph.conf --pool rbd
//! ```
//! `--client fio` uses fio's nbd engine (libnbd) instead of the built-in
//! pipelined client.
//!
//! Issue 9's targets, checked in the record (`bench/results/gateway-reads.md`,
//! written when the store is Ceph): NBD random reads at every step (32
//! snapshots in the issue) at least 0.9× the control; NBD reads at least
//! 0.8× the engine's reads of the same image; and, with `--thin-grains`, NBD
//! random reads of a 1 TiB thin image with that many random grains written
//! no slower than those of the filled control, measured alternately in the
//! same run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use clap::{Parser, ValueEnum};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use rbd_gateway::{ExportSelection, Gateway, GatewayConfig};
use rbd_row_bench::counts::Sample;
use rbd_row_bench::results::{Cell, Report, Row, Target};
use rbd_row_cli::store_select::{self, StoreArgs, StoreTarget, Stores};
use row_layer::{CreateOptions, Image};
use row_nbd::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    /// The built-in pipelined NBD client (structured replies).
    Native,
    /// fio's nbd engine.
    Fio,
}

#[derive(Parser)]
struct Args {
    /// Store selection as for rbd-gateway; without any, a local store in a
    /// temporary directory.
    #[command(flatten)]
    store: StoreArgs,
    /// Pool of the images.
    #[arg(long, default_value = "rbd")]
    pool: String,
    /// Size of each image (K/M/G/T suffixes).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Snapshot counts to measure at.
    #[arg(long, value_delimiter = ',', default_value = "0,1,4,16")]
    steps: Vec<u32>,
    /// Random 4 KiB grains written to both images before the first step.
    #[arg(long, default_value_t = 20000)]
    written: u64,
    /// Random 4 KiB writes to both images after each snapshot.
    #[arg(long, default_value_t = 500)]
    churn: u64,
    /// Reads per measurement.
    #[arg(long, default_value_t = 4000)]
    ops: u64,
    /// Reads in flight.
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Measurement rounds per step (each reads the image and the control,
    /// over NBD then on the engine; who goes first flips every round).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// NBD client.
    #[arg(long, value_enum, default_value = "native")]
    client: ClientKind,
    /// Fill both images sequentially before the random writes.
    #[arg(long)]
    fill: bool,
    /// Random 4 KiB grains written to a third, 1 TiB thin image whose NBD
    /// reads are compared with the control's (0: no thin image).
    #[arg(long, default_value_t = 0)]
    thin_grains: u64,
    /// Print, per measurement, counts that need no profiler
    /// (`rbd_row_bench::counts`): the backend ops per read (all the
    /// gateway's stores), this process's context switches and CPU time per
    /// read, on Ceph the OSDs' latency per op, and the CLOCK_MONOTONIC
    /// window (for `perf report --time` of a `perf record -k
    /// CLOCK_MONOTONIC`).
    #[arg(long)]
    counts: bool,
}

const GROUP: &str = "Gateway reads: 4 KiB random reads over NBD, image vs no-snapshot control";

fn parse_size(s: &str) -> anyhow::Result<u64> {
    rbd_row_cli::size::parse_size(s, 1).map_err(|e| anyhow!("--size: {}", e.message))
}

fn explicit_store(a: &StoreArgs) -> bool {
    a.store.is_some()
        || a.conf.is_some()
        || a.id.is_some()
        || a.name.is_some()
        || a.keyring.is_some()
        || a.cluster.is_some()
}

/// `n` random grain-aligned 4 KiB writes (seeded: both images get the same).
async fn random_writes(img: &Image, n: u64, seed: u64) -> anyhow::Result<()> {
    rbd_row_bench::random_writes(img, 4096, n, 16, seed).await?;
    img.flush().await?;
    Ok(())
}

/// `ops` random 4 KiB reads straight on the engine handle (no NBD), with
/// `depth` in flight: the engine's own cost, for comparison.
async fn engine_reads(img: &Image, ops: u64, depth: usize, seed: u64) -> anyhow::Result<f64> {
    Ok(rbd_row_bench::random_reads(img, 4096, ops, depth, seed)
        .await?
        .iops())
}

/// A pipelined NBD client with structured replies.
struct NbdClient {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl NbdClient {
    async fn connect(addr: SocketAddr, export: &str) -> anyhow::Result<NbdClient> {
        let s = TcpStream::connect(addr).await.context("connecting")?;
        s.set_nodelay(true)?;
        let (rd, wr) = s.into_split();
        let mut c = NbdClient {
            rd: BufReader::new(rd),
            wr,
        };
        ensure!(c.rd.read_u64().await? == NBDMAGIC, "bad greeting");
        ensure!(c.rd.read_u64().await? == IHAVEOPT, "bad greeting");
        let _flags = c.rd.read_u16().await?;
        c.wr.write_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .await?;
        c.option(OPT_STRUCTURED_REPLY, &[]).await?;
        let mut go = Vec::new();
        go.extend_from_slice(&(export.len() as u32).to_be_bytes());
        go.extend_from_slice(export.as_bytes());
        go.extend_from_slice(&0u16.to_be_bytes());
        c.option(OPT_GO, &go).await?;
        Ok(c)
    }

    /// Sends an option and reads its replies up to the ACK.
    async fn option(&mut self, opt: u32, data: &[u8]) -> anyhow::Result<()> {
        let mut b = Vec::new();
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.wr.write_all(&b).await?;
        loop {
            ensure!(self.rd.read_u64().await? == OPT_REPLY_MAGIC, "bad reply");
            let _opt = self.rd.read_u32().await?;
            let typ = self.rd.read_u32().await?;
            let len = self.rd.read_u32().await?;
            let mut d = vec![0; len as usize];
            self.rd.read_exact(&mut d).await?;
            if typ == REP_ACK {
                return Ok(());
            }
            ensure!(typ & (1 << 31) == 0, "option {opt} refused ({typ:#x})");
        }
    }

    /// `ops` random 4 KiB reads over `[0, size)` with `depth` in flight.
    async fn random_reads(
        self,
        size: u64,
        ops: u64,
        depth: usize,
        seed: u64,
    ) -> anyhow::Result<Duration> {
        let NbdClient { mut rd, mut wr } = self;
        let slots = size / 4096;
        let window = Arc::new(Semaphore::new(depth));
        let start = Instant::now();
        let sender = {
            let window = window.clone();
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(seed);
                for h in 0..ops {
                    window.acquire().await?.forget();
                    let off = rng.gen_range(0..slots) * 4096;
                    let mut b = [0u8; 28];
                    b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
                    b[6..8].copy_from_slice(&CMD_READ.to_be_bytes());
                    b[8..16].copy_from_slice(&h.to_be_bytes());
                    b[16..24].copy_from_slice(&off.to_be_bytes());
                    b[24..28].copy_from_slice(&4096u32.to_be_bytes());
                    wr.write_all(&b).await?;
                }
                Ok::<_, anyhow::Error>(wr)
            })
        };
        let mut done = 0;
        let mut payload = vec![0u8; 64 << 10];
        while done < ops {
            let magic = rd.read_u32().await?;
            ensure!(
                magic == STRUCTURED_REPLY_MAGIC,
                "unexpected reply {magic:#x}"
            );
            let flags = rd.read_u16().await?;
            let typ = rd.read_u16().await?;
            let _handle = rd.read_u64().await?;
            let len = rd.read_u32().await? as usize;
            if payload.len() < len {
                payload.resize(len, 0);
            }
            rd.read_exact(&mut payload[..len]).await?;
            if typ == REPLY_TYPE_ERROR || typ == REPLY_TYPE_ERROR_OFFSET {
                bail!("read failed on the server");
            }
            if flags & REPLY_FLAG_DONE != 0 {
                done += 1;
                window.add_permits(1);
            }
        }
        let elapsed = start.elapsed();
        let mut wr = sender.await??;
        let mut b = [0u8; 28];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_DISC.to_be_bytes());
        wr.write_all(&b).await?;
        Ok(elapsed)
    }
}

/// Read IOPS of one measurement.
async fn measure(
    args: &Args,
    addr: SocketAddr,
    export: &str,
    size: u64,
    seed: u64,
) -> anyhow::Result<f64> {
    match args.client {
        ClientKind::Native => {
            let c = NbdClient::connect(addr, export).await?;
            let t = c.random_reads(size, args.ops, args.depth, seed).await?;
            Ok(args.ops as f64 / t.as_secs_f64().max(1e-9))
        }
        ClientKind::Fio => {
            let uri = format!("nbd://{}:{}/{}", addr.ip(), addr.port(), export);
            let mut cmd = std::process::Command::new("fio");
            cmd.args([
                "--name=gwreads",
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                "--rw=randread",
                "--bs=4k",
                &format!("--iodepth={}", args.depth),
                &format!("--size={size}"),
                &format!("--io_size={}", args.ops * 4096),
                "--norandommap",
                &format!("--randseed={seed}"),
                "--output-format=terse",
                "--terse-version=3",
            ]);
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await?
                .context("running fio")?;
            ensure!(
                out.status.success(),
                "fio failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            parse_fio_terse_read_iops(&String::from_utf8_lossy(&out.stdout))
                .ok_or_else(|| anyhow!("cannot parse fio output"))
        }
    }
}

/// Read IOPS (field 8) of fio's terse v3 line.
fn parse_fio_terse_read_iops(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.starts_with("3;"))?;
    line.split(';').nth(7)?.parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = parse_size(&args.size)?;
    ensure!(size >= 1 << 20, "--size must be at least 1 MiB");
    let mut _tmp = None;
    let target = if explicit_store(&args.store) {
        store_select::select(&args.store, &|k| std::env::var(k).ok())
            .map_err(|e| anyhow!("{}", e.message))?
    } else {
        let t = tempfile::tempdir()?;
        let dir: PathBuf = t.path().to_path_buf();
        _tmp = Some(t);
        StoreTarget::Local {
            dir,
            is_default: false,
        }
    };
    let (where_, target_kind) = match &target {
        StoreTarget::Local { dir, .. } => (format!("local store {}", dir.display()), Kind::Local),
        StoreTarget::Ceph(_) => ("Ceph".to_owned(), Kind::Ceph),
    };
    let stores = Arc::new(Stores::new(target));
    let store = stores
        .get(&args.pool, "", true)
        .await
        .map_err(|e| anyhow!("{}", e.message))?
        .ok_or_else(|| anyhow!("pool {} not found", args.pool))?;
    let tag = std::process::id();
    let (img_name, ctl_name) = (format!("gwr-img-{tag}"), format!("gwr-ctl-{tag}"));
    let thin_name = format!("gwr-thin-{tag}");
    for n in [&img_name, &ctl_name] {
        store.create(n, CreateOptions::with_size(size)).await?;
    }
    if args.thin_grains > 0 {
        store
            .create(&thin_name, CreateOptions::with_size(1 << 40))
            .await?;
    }

    // The thin image exists only with --thin-grains (a gateway refuses to
    // bind with an export whose image does not exist).
    let mut exports = vec![img_name.clone(), ctl_name.clone()];
    if args.thin_grains > 0 {
        exports.push(thin_name.clone());
    }
    let mut config = GatewayConfig::new(stores.clone(), ExportSelection::Only(exports));
    config.default_pool = args.pool.clone();
    config.listen = vec!["127.0.0.1:0".parse()?];
    let gw = Gateway::bind(config).await?;
    let addr = gw.local_addrs()[0];
    let registry = gw.registry();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gw.run(async move {
        let _ = stop_rx.await;
    }));
    let img = registry
        .image(&img_name)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let ctl = registry
        .image(&ctl_name)
        .await
        .map_err(|e| anyhow!("{e}"))?;

    if args.fill {
        eprintln!("{where_}: filling both images...");
        rbd_row_bench::fill(&img, 4 << 20, 16).await?;
        rbd_row_bench::fill(&ctl, 4 << 20, 16).await?;
    }
    eprintln!(
        "{where_}: writing {} random grains to both images...",
        args.written
    );
    random_writes(&img, args.written, 1).await?;
    random_writes(&ctl, args.written, 1).await?;
    println!(
        "# random 4 KiB NBD reads ({:?} client, {} in flight, {} per measurement, {} rounds), \
         {} MiB images with {} written grains + {} per snapshot, {where_}",
        args.client,
        args.depth,
        args.ops,
        args.rounds,
        size >> 20,
        args.written,
        args.churn
    );
    println!(
        "snapshots  image_iops  control_iops  ratio(image/control)  \
         engine_image_iops  engine_control_iops  engine_ratio"
    );
    let mut report = Report::default();
    let mut taken = 0u32;
    let (counts, osd) = (args.counts, matches!(target_kind, Kind::Ceph));
    for &target in &args.steps {
        while taken < target {
            img.snap_create(&format!("s{taken}")).await?;
            let seed = 100 + u64::from(taken);
            random_writes(&img, args.churn, seed).await?;
            random_writes(&ctl, args.churn, seed).await?;
            taken += 1;
        }
        let mut s = [vec![], vec![], vec![], vec![]];
        for round in 0..args.rounds {
            let seed = 1000 * u64::from(round + 1) + u64::from(target);
            // The order flips every round (image first in even rounds), so
            // what runs first after a step's writes is not always the image.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for engine in [false, true] {
                for which in order {
                    let sample = || Sample::now(registry.backend_ops(), osd);
                    let before = counts.then(sample).transpose()?;
                    let iops = if engine {
                        engine_reads([&img, &ctl][which], args.ops, args.depth, seed + 7).await?
                    } else {
                        let name = [&img_name, &ctl_name][which];
                        measure(&args, addr, name, size, seed).await?
                    };
                    s[2 * usize::from(engine) + which].push(iops);
                    if let Some(before) = before {
                        let label = format!(
                            "{} {}, {target} snapshots, round {round}",
                            ["NBD", "engine"][usize::from(engine)],
                            ["image", "control"][which]
                        );
                        let d = before.describe(&sample()?, args.ops);
                        eprintln!("counts {label}: {iops:.0} IOPS; {d}");
                    }
                }
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (r, c, er, ec) = (mean(&s[0]), mean(&s[1]), mean(&s[2]), mean(&s[3]));
        step_rows(&mut report, &args, target, &s);
        println!(
            "{target:>9}  {r:>10.0}  {c:>12.0}  {:>20.2}  {er:>17.0}  {ec:>19.0}  {:>12.2}",
            r / c,
            er / ec
        );
    }

    if args.thin_grains > 0 {
        thin_rows(
            &mut report,
            &args,
            &registry,
            addr,
            (&thin_name, &ctl_name),
            size,
        )
        .await?;
    }
    report.about.push((
        "Workload".into(),
        format!(
            "{} MiB image and no-snapshot control{} with {} random 4 KiB grains written, then per snapshot {} more to both; {} rounds per step, each reading the image and the control over NBD ({:?} client: {} reads, {} in flight), then both on the engine handles, the image first in even rounds and second in odd ones; one in-process rbd-gateway serves all images",
            size >> 20,
            if args.fill { ", filled first," } else { "" },
            args.written,
            args.churn,
            args.rounds,
            args.client,
            args.ops,
            args.depth
        ),
    ));
    drop((img, ctl));
    let _ = stop_tx.send(());
    server.await??;
    if args.thin_grains > 0 {
        store.remove(&thin_name).await?;
    }
    let img = store.open(&img_name).await?;
    for s in img.snap_list() {
        img.snap_remove(&s.name).await?;
    }
    img.close().await?;
    store.remove(&img_name).await?;
    store.remove(&ctl_name).await?;
    if matches!(target_kind, Kind::Ceph) {
        let title = "gateway-reads: NBD reads vs snapshots, the engine and a thin TiB";
        let path = rbd_row_bench::record::write("gateway-reads", title, true, &report)?;
        eprintln!("record written to {}", path.display());
    }
    Ok(())
}

enum Kind {
    Local,
    Ceph,
}

/// The rows of one step: NBD image vs control, and NBD vs the engine.
fn step_rows(report: &mut Report, args: &Args, snaps: u32, s: &[Vec<f64>; 4]) {
    report.rows.push(
        Row::new(
            GROUP,
            &format!("NBD reads ({:?} client), {snaps} snapshots", args.client),
            "IOPS",
            Cell::from_samples(&s[0]),
        )
        .control(Cell::from_samples(&s[1]))
        .target(Target::vs_control("≥ 0.9× control (issue 9)", true, 0.9)),
    );
    report.rows.push(
        Row::new(
            GROUP,
            &format!("engine reads (in-process), {snaps} snapshots"),
            "IOPS",
            Cell::from_samples(&s[2]),
        )
        .control(Cell::from_samples(&s[3])),
    );
    let per_round: Vec<f64> = s[0].iter().zip(&s[2]).map(|(n, e)| n / e).collect();
    report.rows.push(
        Row::new(
            GROUP,
            &format!("NBD reads / engine reads of the same image, {snaps} snapshots (per round)"),
            "ratio",
            Cell::from_samples(&per_round),
        )
        .target(Target::value("≥ 0.8 (issue 9)", true, 0.8)),
    );
}

/// Writes `args.thin_grains` random grains to the 1 TiB thin image, then
/// reads it and the filled control over NBD alternately.
async fn thin_rows(
    report: &mut Report,
    args: &Args,
    registry: &rbd_gateway::ImageRegistry,
    addr: SocketAddr,
    (thin, ctl): (&str, &str),
    ctl_size: u64,
) -> anyhow::Result<()> {
    let img = registry.image(thin).await.map_err(|e| anyhow!("{e}"))?;
    eprintln!(
        "writing {} random grains to the 1 TiB thin image...",
        args.thin_grains
    );
    random_writes(&img, args.thin_grains, 5).await?;
    let (mut t, mut c) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let seed = 77 + u64::from(round);
        let first_thin = round % 2 == 0;
        for which in [first_thin, !first_thin] {
            if which {
                t.push(measure(args, addr, thin, 1 << 40, seed).await?);
            } else {
                c.push(measure(args, addr, ctl, ctl_size, seed).await?);
            }
        }
    }
    report.rows.push(
        Row::new(
            GROUP,
            &format!(
                "NBD reads ({:?} client) of a 1 TiB thin image with {} random grains written, vs the filled control",
                args.client, args.thin_grains
            ),
            "IOPS",
            Cell::from_samples(&t),
        )
        .control(Cell::from_samples(&c))
        .target(Target::vs_control("≥ 1× the filled image (issue 9: no slower)", true, 1.0)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fio_terse() {
        let line = "3;fio-3.33;gwreads;0;0;16000;5000;1250;3200;";
        assert_eq!(super::parse_fio_terse_read_iops(line), Some(1250.0));
        assert_eq!(super::parse_fio_terse_read_iops("nothing"), None);
    }
}

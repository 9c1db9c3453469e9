//! Issue 12 row 2: 4 KiB random writes and reads as snapshots accumulate.
//! Native RBD (fio's rbd engine, real librbd), rbd-row through
//! `rbd-gateway` (fio's nbd engine) and, when it is built, rbd-row through
//! the C ABI drop-in (fio's rbd engine again), each next to a no-snapshot
//! control image that gets the same writes. After each new snapshot every
//! image gets `churn` random 4 KiB writes, so native RBD has clones to make
//! and rbd-row has epochs to resolve through. Reads are measured at the
//! head and at the oldest snapshot. The RADOS ceiling (plain 4 KiB object
//! writes at the same depth, in a namespace of its own) is measured again
//! in every step, alternating with the systems' write runs, so the ratio to
//! it compares figures taken under the same machine load.

use crate::ctx::{alternate, fio_probe, iops, remove_row_image, Ctx, Probe};
use crate::profile::{self, Subject};
use anyhow::anyhow;
use rbd_row_bench::fio::{Amount, FioJob, FioTarget};
use rbd_row_bench::gateway::InProcGateway;
use rbd_row_bench::plot::Series;
use rbd_row_bench::raw::{rados_writes_for, remove_raw_objects};
use rbd_row_bench::results::{Cell, Row, Target};
use row_layer::backend::Backend;
use row_layer::{CreateOptions, Image};
use std::sync::Arc;

pub(crate) const GROUP: &str = "2. Snapshot scaling: 4 KiB random I/O, iodepth 16";

/// Per step: (snapshots, native, rbd-row, control) medians, for the plots.
#[derive(Default)]
pub(crate) struct Curves {
    pub(crate) writes: Vec<(f64, [Option<f64>; 3])>,
    pub(crate) reads: Vec<(f64, [Option<f64>; 3])>,
}

struct Images {
    nat: String,
    row: String,
    ctl: String,
    cab: String,
    cac: String,
    /// The namespace the ceiling's raw objects are written in.
    raw: Arc<dyn Backend>,
}

pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<Curves> {
    let cluster = ctx
        .stores
        .cluster()
        .await
        .map_err(|e| anyhow!("{}", e.message))?
        .ok_or_else(|| anyhow!("not a Ceph target"))?;
    let im = Images {
        nat: ctx.name("scale-nat"),
        row: ctx.name("scale-row"),
        ctl: ctx.name("scale-ctl"),
        cab: ctx.name("scale-cab"),
        cac: ctx.name("scale-cac"),
        raw: Arc::new(cluster.open_pool(&ctx.pool, &ctx.name("scale-raw")).await?),
    };
    let size = ctx.p.size;
    ctx.rbd(&[
        "create",
        "--size",
        &(size >> 20).to_string(),
        &ctx.spec(&im.nat),
    ])?;
    let mut row_names = vec![im.row.clone(), im.ctl.clone()];
    if ctx.cabi.is_ok() {
        row_names.extend([im.cab.clone(), im.cac.clone()]);
    }
    for n in &row_names {
        ctx.store.create(n, CreateOptions::with_size(size)).await?;
    }
    let gw = InProcGateway::start(ctx.stores.clone(), &ctx.pool).await?;
    let r = steps(ctx, &gw, &im).await;
    gw.stop().await?;
    rbd_row_bench::ceph::remove_native(&ctx.spec(&im.nat));
    for n in &row_names {
        if let Err(e) = remove_row_image(&ctx.store, n).await {
            crate::progress!("cleanup of {n}: {e:#}");
        }
    }
    if let Err(e) = remove_raw_objects(im.raw.as_ref()).await {
        crate::progress!("cleanup of the ceiling's objects: {e:#}");
    }
    r
}

/// The RADOS ceiling for one repeat: plain 4 KiB object writes for the
/// fio jobs' runtime at their depth.
fn ceiling_probe(ctx: &Ctx, be: Arc<dyn Backend>) -> Probe {
    let h = tokio::runtime::Handle::current();
    let (secs, depth) = (ctx.p.runtime, ctx.p.depth);
    Arc::new(move |_seed| h.block_on(rados_writes_for(be.clone(), secs, depth, false)))
}

async fn fill_all(ctx: &Ctx, gw: &InProcGateway, im: &Images) -> anyhow::Result<()> {
    let size = ctx.p.size;
    crate::progress!("filling the scaling images ({} MiB each)", size >> 20);
    let job = FioJob {
        target: ctx.native_target(&im.nat),
        rw: "write",
        bs: 4 << 20,
        iodepth: 16,
        size,
        amount: Amount::Ios(size / (4 << 20)),
        seed: 1,
    };
    tokio::task::spawn_blocking(move || job.run()).await??;
    for n in [&im.row, &im.ctl] {
        rbd_row_bench::fill(&gw.image(n).await?, 4 << 20, 16).await?;
    }
    if ctx.cabi.is_ok() {
        for n in [&im.cab, &im.cac] {
            let img = ctx.store.open(n).await?;
            rbd_row_bench::fill(&img, 4 << 20, 16).await?;
            img.close().await?;
        }
    }
    Ok(())
}

/// Random 4 KiB churn on an rbd-row handle (flushed).
async fn churn(img: &Image, n: u64, seed: u64) -> anyhow::Result<()> {
    rbd_row_bench::random_writes(img, 4096, n, 16, seed).await?;
    img.flush().await?;
    Ok(())
}

/// Takes snapshots `from..to` on every snapshotted image, each followed by
/// churn on every image (the controls get the churn, no snapshot).
async fn snapshots(
    ctx: &Ctx,
    gw: &InProcGateway,
    im: &Images,
    from: u32,
    to: u32,
) -> anyhow::Result<()> {
    let (row, ctl) = (gw.image(&im.row).await?, gw.image(&im.ctl).await?);
    let cabi = if ctx.cabi.is_ok() {
        Some((
            ctx.store.open(&im.cab).await?,
            ctx.store.open(&im.cac).await?,
        ))
    } else {
        None
    };
    for s in from..to {
        let seed = 100 + u64::from(s);
        ctx.rbd(&["snap", "create", &format!("{}@s{s}", ctx.spec(&im.nat))])?;
        let mut job = ctx.job(ctx.native_target(&im.nat), "randwrite", ctx.p.size);
        job.amount = Amount::Ios(ctx.p.churn);
        job.seed = seed;
        tokio::task::spawn_blocking(move || job.run()).await??;
        row.snap_create(&format!("s{s}")).await?;
        churn(&row, ctx.p.churn, seed).await?;
        churn(&ctl, ctx.p.churn, seed).await?;
        if let Some((cab, cac)) = &cabi {
            cab.snap_create(&format!("s{s}")).await?;
            churn(cab, ctx.p.churn, seed).await?;
            churn(cac, ctx.p.churn, seed).await?;
        }
    }
    if let Some((cab, cac)) = cabi {
        cab.close().await?;
        cac.close().await?;
    }
    Ok(())
}

/// Native reads of a snapshot with `rbd bench` (fio's rbd engine cannot
/// open a snapshot).
fn native_snap_reads(ctx: &Ctx, spec: String) -> Probe {
    let conf = ctx.conf.display().to_string();
    let ops = (ctx.p.runtime.as_secs_f64() * 8000.0) as u64;
    let depth = ctx.p.depth.to_string();
    Arc::new(move |_seed| {
        let total = (ops * 4096).to_string();
        let out = rbd_row_bench::ceph::rbd(&[
            "-c",
            &conf,
            "bench",
            "--io-type",
            "read",
            "--io-size",
            "4K",
            "--io-threads",
            &depth,
            "--io-total",
            &total,
            "--io-pattern",
            "rand",
            &spec,
        ])?;
        rbd_row_bench::parse_rbd_bench(&out)
            .ok_or_else(|| anyhow::anyhow!("cannot parse rbd bench output"))
    })
}

async fn steps(ctx: &mut Ctx, gw: &InProcGateway, im: &Images) -> anyhow::Result<Curves> {
    fill_all(ctx, gw, im).await?;
    let mut curves = Curves::default();
    let mut taken = 0;
    for &n in &ctx.p.steps.clone() {
        crate::progress!("scaling step {n} snapshots");
        snapshots(ctx, gw, im, taken, n).await?;
        taken = n;
        for rw in ["randwrite", "randread"] {
            let cells = measure(ctx, gw, im, rw).await;
            let pts = [cells[0].median(), cells[1].median(), cells[2].median()];
            if rw == "randwrite" {
                curves.writes.push((f64::from(n), pts));
            } else {
                curves.reads.push((f64::from(n), pts));
            }
            push_rows(ctx, gw, im, n, rw, cells).await;
        }
        if n > 0 {
            oldest_snapshot(ctx, gw, im, n).await;
        }
    }
    Ok(curves)
}

/// The step's fio jobs: native, NBD, NBD control, C ABI, C ABI control.
fn jobs(
    ctx: &Ctx,
    gw: &InProcGateway,
    im: &Images,
    rw: &'static str,
) -> Vec<Result<FioJob, String>> {
    let size = ctx.p.size;
    let nbd = |n: &str| FioTarget::Nbd { uri: gw.uri(n) };
    vec![
        Ok(ctx.job(ctx.native_target(&im.nat), rw, size)),
        Ok(ctx.job(nbd(&im.row), rw, size)),
        Ok(ctx.job(nbd(&im.ctl), rw, size)),
        ctx.cabi_target(&im.cab).map(|t| ctx.job(t, rw, size)),
        ctx.cabi_target(&im.cac).map(|t| ctx.job(t, rw, size)),
    ]
}

/// The five systems' cells, and for writes a sixth: the RADOS ceiling,
/// alternating with them.
async fn measure(ctx: &Ctx, gw: &InProcGateway, im: &Images, rw: &'static str) -> Vec<Cell> {
    let mut probes: Vec<Result<Probe, String>> = jobs(ctx, gw, im, rw)
        .into_iter()
        .map(|j| fio_probe(j, iops))
        .collect();
    if rw == "randwrite" {
        probes.push(Ok(ceiling_probe(ctx, im.raw.clone())));
    }
    alternate(probes, ctx.p.repeats).await
}

async fn push_rows(
    ctx: &mut Ctx,
    gw: &InProcGateway,
    im: &Images,
    n: u32,
    rw: &'static str,
    c: Vec<Cell>,
) {
    let what = if rw == "randwrite" {
        "writes"
    } else {
        "reads (head)"
    };
    let ceiling = c.get(5).cloned();
    let mut nbd = Row::new(
        GROUP,
        &format!("{what}, {n} snapshots, NBD"),
        "IOPS",
        c[1].clone(),
    )
    .native(c[0].clone())
    .control(c[2].clone())
    .target(Target::vs_control("≥ 0.9× control (issue 9)", true, 0.9));
    let mut abi = Row::new(
        GROUP,
        &format!("{what}, {n} snapshots, C ABI"),
        "IOPS",
        c[3].clone(),
    )
    .native(c[0].clone())
    .control(c[4].clone());
    abi = match (rw, n) {
        ("randwrite", 0) | ("randread", 0) => {
            abi.target(Target::vs_native("≥ 0.9× native (issue 8)", true, 0.9))
        }
        ("randwrite", 64) => abi.target(Target::vs_native("≥ 2× native (issue 8)", true, 2.0)),
        _ => abi.target(Target::vs_control("≥ 0.9× control (issue 9)", true, 0.9)),
    };
    if let Some(cl) = ceiling {
        nbd = nbd.ceiling(cl.clone());
        abi = abi.ceiling(cl);
    }
    let mut j = jobs(ctx, gw, im, rw).into_iter().skip(1).step_by(2);
    if let Some(Ok(job)) = j.next() {
        profile::if_missed(ctx, &nbd, Subject::FioHere(job)).await;
    }
    if let Some(Ok(job)) = j.next() {
        profile::if_missed(ctx, &abi, Subject::FioItself(job)).await;
    }
    ctx.report.rows.push(nbd);
    ctx.report.rows.push(abi);
}

async fn oldest_snapshot(ctx: &mut Ctx, gw: &InProcGateway, im: &Images, n: u32) {
    let size = ctx.p.size;
    let snap = |name: &str| format!("{name}@s0");
    let nbd = |e: String| rbd_row_bench::fio::FioTarget::Nbd { uri: gw.uri(&e) };
    let probes = vec![
        Ok(native_snap_reads(ctx, snap(&ctx.spec(&im.nat)))),
        fio_probe(Ok(ctx.job(nbd(snap(&im.row)), "randread", size)), iops),
        fio_probe(Ok(ctx.job(nbd(im.ctl.clone()), "randread", size)), iops),
    ];
    let c = alternate(probes, ctx.p.repeats).await;
    let row = Row::new(
        GROUP,
        &format!("reads of the oldest snapshot, {n} snapshots, NBD (native: rbd bench)"),
        "IOPS",
        c[1].clone(),
    )
    .native(c[0].clone())
    .control(c[2].clone())
    .target(Target::vs_control("≥ 0.9× control (issue 9)", true, 0.9));
    let job = ctx.job(nbd(snap(&im.row)), "randread", size);
    profile::if_missed(ctx, &row, Subject::FioHere(job)).await;
    ctx.report.rows.push(row);
}

/// The IOPS-against-snapshots series of one direction.
pub(crate) fn series(points: &[(f64, [Option<f64>; 3])]) -> Vec<Series> {
    [
        "native RBD (fio rbd)",
        "rbd-row (fio nbd, gateway)",
        "rbd-row control, no snapshots",
    ]
    .iter()
    .enumerate()
    .map(|(i, name)| Series {
        name: (*name).into(),
        points: points
            .iter()
            .filter_map(|(x, v)| v[i].map(|y| (*x, y)))
            .collect(),
    })
    .collect()
}

//! Issue 12 row 6, metadata operations (rollback is in `diffs`): snapshot
//! create latency under write load, snapshot removal with the space
//! reclaimed over time and the I/O stall it causes, open time with many
//! snapshots, and the gateway's resident memory per TiB written.

use crate::ctx::{first_line, remove_row_image, Ctx};
use crate::rolling::{NAT_POOL, ROW_POOL};
use rbd_row_bench::ceph;
use rbd_row_bench::fio::{Amount, FioJob, FioResult, FioTarget};
use rbd_row_bench::gateway::InProcGateway;
use rbd_row_bench::results::{Cell, Row, Target};
use row_layer::{CreateOptions, Image};
use std::time::{Duration, Instant};

pub(crate) const GROUP: &str = "6. Metadata operations";

fn fio_bg(job: FioJob) -> tokio::task::JoinHandle<anyhow::Result<FioResult>> {
    tokio::task::spawn_blocking(move || job.run())
}

fn load(ctx: &Ctx, t: FioTarget, secs: Duration) -> FioJob {
    let mut j = ctx.job(t, "randwrite", ctx.p.size);
    j.amount = Amount::Time(secs);
    j
}

pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    for (name, r) in [
        (
            "snapshot create under write load",
            snap_under_load(ctx).await,
        ),
        ("snapshot removal and reclaim", removal(ctx).await),
        ("open with many snapshots", open_time(ctx).await),
        ("gateway memory", gateway_rss(ctx).await),
    ] {
        if let Err(e) = r {
            ctx.report.rows.push(Row::not_run(
                GROUP,
                name,
                "–",
                &first_line(&format!("{e:#}")),
            ));
        }
    }
    Ok(())
}

/// Native: `rbd snap create` (process start included) while fio's rbd
/// engine writes; rbd-row: `Image::snap_create` on the gateway's handle
/// while fio writes over NBD.
async fn snap_under_load(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (nat, row) = (ctx.name("load-nat"), ctx.name("load-row"));
    let size = ctx.p.size;
    ctx.rbd(&[
        "create",
        "--size",
        &(size >> 20).to_string(),
        &ctx.spec(&nat),
    ])?;
    ctx.store
        .create(&row, CreateOptions::with_size(size))
        .await?;
    let gw = InProcGateway::start(ctx.stores.clone(), &ctx.pool).await?;
    let r = async {
        let n = ctx.p.load_snaps;
        let window = Duration::from_millis(400) * (n + 2);
        let bg = fio_bg(load(ctx, ctx.native_target(&nat), window));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut ns = Vec::new();
        for i in 0..n {
            let t = ceph::timed("rbd", &["-c", &ctx.conf.display().to_string(), "snap", "create", "--no-progress", &format!("{}@l{i}", ctx.spec(&nat))])?;
            ns.push(t.as_secs_f64());
        }
        bg.await??;
        let img = gw.image(&row).await?;
        let bg = fio_bg(load(ctx, FioTarget::Nbd { uri: gw.uri(&row) }, window));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut rs = Vec::new();
        for i in 0..n {
            let t = Instant::now();
            img.snap_create(&format!("l{i}")).await?;
            rs.push(t.elapsed().as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bg.await??;
        ctx.report.rows.push(
            Row::new(GROUP, "snapshot create under 4 KiB random-write load (rbd-row in-process; native `rbd snap create`, process start included)", "ms", Cell::from_samples(&rs))
                .native(Cell::from_samples(&ns.iter().map(|s| s * 1e3).collect::<Vec<_>>())),
        );
        anyhow::Ok(())
    }
    .await;
    gw.stop().await?;
    ceph::remove_native(&ctx.spec(&nat));
    remove_row_image(&ctx.store, &row).await?;
    r
}

/// Pool stored bytes every second for `window`, from `start`.
async fn watch_pool(pool: &str, window: Duration) -> anyhow::Result<Vec<(f64, u64)>> {
    let t = Instant::now();
    let mut out = Vec::new();
    while t.elapsed() < window {
        out.push((t.elapsed().as_secs_f64(), ceph::pool_stats(pool)?.0));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(out)
}

/// Seconds until the pool had given back 90% of what it gave back by the
/// end of the window (`None`: it gave nothing back).
fn reclaim_time(samples: &[(f64, u64)], before: u64) -> Option<f64> {
    let end = samples.last()?.1;
    // Less than 1 MiB is statistics noise, not reclaim.
    let freed = before.checked_sub(end).filter(|f| *f >= 1 << 20)?;
    samples
        .iter()
        .find(|(_, s)| before.saturating_sub(*s) >= freed * 9 / 10)
        .map(|(t, _)| *t)
}

/// One snapshot with the whole image overwritten after it, removed while
/// fio writes; the pool's stored bytes are watched, and fio's largest
/// completion latency is the stall.
async fn removal(ctx: &mut Ctx) -> anyhow::Result<()> {
    ceph::ensure_pool(NAT_POOL)?;
    ceph::ensure_pool(ROW_POOL)?;
    let size = ctx.p.size.min(256 << 20);
    let nat = format!("{NAT_POOL}/{}", ctx.name("rm-nat"));
    let row = ctx.name("rm-row");
    ctx.rbd(&["create", "--size", &(size >> 20).to_string(), &nat])?;
    let row_store = rbd_row_bench::gateway::store(&ctx.stores, ROW_POOL).await?;
    row_store
        .create(&row, CreateOptions::with_size(size))
        .await?;
    let gw = InProcGateway::start(ctx.stores.clone(), &ctx.pool).await?;
    let r = removal_steps(ctx, &gw, size, &nat, &format!("{ROW_POOL}/{row}")).await;
    gw.stop().await?;
    ceph::remove_native(&nat);
    remove_row_image(&row_store, &row).await?;
    r
}

async fn removal_steps(
    ctx: &mut Ctx,
    gw: &InProcGateway,
    size: u64,
    nat: &str,
    row: &str,
) -> anyhow::Result<()> {
    let (np, ni) = nat.split_once('/').unwrap_or((NAT_POOL, nat));
    let ntarget = FioTarget::Rbd {
        pool: np.into(),
        image: ni.into(),
        lib_dir: None,
        conf: Some(ctx.conf.clone()),
    };
    let seq = |t: FioTarget| FioJob {
        target: t,
        rw: "write",
        bs: 4 << 20,
        iodepth: 16,
        size,
        amount: Amount::Ios(size / (4 << 20)),
        seed: 1,
    };
    let img: Image = gw.image(row).await?;
    let rtarget = FioTarget::Nbd { uri: gw.uri(row) };
    // Fill, snapshot, overwrite everything: the snapshot alone holds a full copy.
    fio_bg(seq(ntarget.clone())).await??;
    rbd_row_bench::fill(&img, 4 << 20, 16).await?;
    ctx.rbd(&["snap", "create", &format!("{nat}@old")])?;
    img.snap_create("old").await?;
    fio_bg(seq(ntarget.clone())).await??;
    rbd_row_bench::fill(&img, 4 << 20, 16).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let window = ctx.p.reclaim_window;
    let mut res = Vec::new();
    for (pool, target) in [(NAT_POOL, ntarget), (ROW_POOL, rtarget)] {
        let before = ceph::pool_stats(pool)?.0;
        let mut quiet = load(ctx, target.clone(), Duration::from_secs(2));
        quiet.size = size;
        let base = fio_bg(quiet).await??;
        let mut job = load(ctx, target, window);
        job.size = size;
        let bg = fio_bg(job);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if pool == NAT_POOL {
            ctx.rbd(&["snap", "rm", "--no-progress", &format!("{nat}@old")])?;
        } else {
            img.snap_remove("old").await?;
        }
        let samples = watch_pool(pool, window).await?;
        let under = bg.await??;
        res.push((before, samples, base.max_lat, under.max_lat));
    }
    let one = |x: Option<f64>| {
        x.map_or(
            Cell::NotRun("nothing reclaimed within the window".into()),
            |x| Cell::from_samples(&[x]),
        )
    };
    let freed = |r: &(u64, Vec<(f64, u64)>, f64, f64)| {
        r.0.saturating_sub(r.1.last().map_or(r.0, |s| s.1)) as f64 / f64::from(1u32 << 20)
    };
    let (n, r) = (&res[0], &res[1]);
    ctx.report.rows.push(
        Row::new(
            GROUP,
            &format!(
                "space reclaimed within {} s of removing a snapshot that alone holds {} MiB",
                window.as_secs(),
                size >> 20
            ),
            "MiB",
            Cell::from_samples(&[freed(r)]),
        )
        .native(Cell::from_samples(&[freed(n)])),
    );
    ctx.report.rows.push(
        Row::new(
            GROUP,
            "time until 90% of that was reclaimed (pool statistics, ~5 s resolution)",
            "s",
            one(reclaim_time(&r.1, r.0)),
        )
        .native(one(reclaim_time(&n.1, n.0))),
    );
    ctx.report.rows.push(
        Row::new(
            GROUP,
            "largest 4 KiB write latency while removing and reclaiming",
            "ms",
            Cell::from_samples(&[r.3 * 1e3]),
        )
        .native(Cell::from_samples(&[n.3 * 1e3]))
        .control(Cell::from_samples(&[r.2 * 1e3]))
        .target(Target::value("≤ 20 ms stall (issue 9)", false, 20.0)),
    );
    Ok(())
}

/// rbd-row: `Store::open` and `snap create` as snapshots accumulate, and
/// `rbd-row info`; native: `rbd info` at the native count.
async fn open_time(ctx: &mut Ctx) -> anyhow::Result<()> {
    let row = ctx.name("open-row");
    ctx.store
        .create(&row, CreateOptions::with_size(64 << 20))
        .await?;
    let r = open_steps(ctx, &row).await;
    remove_row_image(&ctx.store, &row).await?;
    r?;
    let nat = ctx.name("open-nat");
    let spec = ctx.spec(&nat);
    ctx.rbd(&["create", "--size", "64", &spec])?;
    let n = ctx.p.native_open_snaps;
    let r = async {
        let mut creates = Vec::new();
        for i in 0..n {
            creates.push(
                ceph::timed(
                    "rbd",
                    &[
                        "-c",
                        &ctx.conf.display().to_string(),
                        "snap",
                        "create",
                        "--no-progress",
                        &format!("{spec}@o{i}"),
                    ],
                )?
                .as_secs_f64(),
            );
        }
        let mut infos = Vec::new();
        for _ in 0..ctx.p.repeats.max(3) {
            infos.push(
                ceph::timed(
                    "rbd",
                    &["-c", &ctx.conf.display().to_string(), "info", &spec],
                )?
                .as_secs_f64(),
            );
        }
        ctx.report.rows.push(
            Row::new(
                GROUP,
                &format!("native `rbd info` (process start included), {n} snapshots"),
                "s",
                Cell::NotRun("see the rbd-row rows above".into()),
            )
            .native(Cell::from_samples(&infos)),
        );
        ctx.report.rows.push(
            Row::new(
                GROUP,
                &format!("native `rbd snap create` (process start included), up to {n} snapshots"),
                "s",
                Cell::NotRun("see the rbd-row rows above".into()),
            )
            .native(Cell::from_samples(&creates)),
        );
        anyhow::Ok(())
    }
    .await;
    ceph::remove_native(&spec);
    r
}

async fn open_steps(ctx: &mut Ctx, row: &str) -> anyhow::Result<()> {
    let img = ctx.store.open(row).await?;
    let mut taken = 0u32;
    let mut created = Vec::new();
    for &n in &ctx.p.open_snaps.clone() {
        crate::progress!("open time at {n} snapshots");
        let mut last = Vec::new();
        while taken < n {
            rbd_row_bench::random_writes(&img, 4096, 1, 1, u64::from(taken)).await?;
            let t = Instant::now();
            img.snap_create(&format!("o{taken}")).await?;
            last.push(t.elapsed().as_secs_f64() * 1e3);
            taken += 1;
        }
        let tail: Vec<f64> = last.iter().rev().take(20).copied().collect();
        created.push((n, tail));
        img.flush().await?;
        let mut opens = Vec::new();
        let mut infos = Vec::new();
        let bins = ctx.bins.clone();
        for _ in 0..ctx.p.repeats.max(3) {
            let t = Instant::now();
            let ro = ctx.store.open_head_read_only(row).await?;
            opens.push(t.elapsed().as_secs_f64());
            drop(ro);
            if let Ok(b) = &bins {
                infos.push(
                    ceph::timed(
                        &b.rbd_row.display().to_string(),
                        &[
                            "-c",
                            &ctx.conf.display().to_string(),
                            "info",
                            &ctx.spec(row),
                        ],
                    )?
                    .as_secs_f64(),
                );
            }
        }
        let mut open = Row::new(
            GROUP,
            &format!("open (read-only head, in-process), {n} snapshots"),
            "s",
            Cell::from_samples(&opens),
        );
        if n >= 10_000 {
            open = open.target(Target::value(
                "≤ 1 s at 10,000 snapshots (issue 9)",
                false,
                1.0,
            ));
        }
        ctx.report.rows.push(open);
        let info = match &bins {
            Ok(_) => Cell::from_samples(&infos),
            Err(e) => Cell::NotRun(e.clone()),
        };
        ctx.report.rows.push(Row::new(
            GROUP,
            &format!("`rbd-row info` (process start included), {n} snapshots"),
            "s",
            info,
        ));
    }
    for (n, tail) in created {
        if tail.is_empty() {
            continue;
        }
        let mut r = Row::new(
            GROUP,
            &format!("snapshot create (in-process, last ≤20 creates up to {n} snapshots)"),
            "ms",
            Cell::from_samples(&tail),
        );
        if n >= 10_000 {
            r = r.target(Target::value(
                "≤ 10 ms at 10,000 snapshots (issue 9)",
                false,
                10.0,
            ));
        }
        ctx.report.rows.push(r);
    }
    img.close().await?;
    Ok(())
}

/// The real `rbd-gateway` process serving a 1 TiB thin image: its RSS
/// before and after fio writes `rss_grains` random 4 KiB grains over NBD.
async fn gateway_rss(ctx: &mut Ctx) -> anyhow::Result<()> {
    let bins = ctx.bins.clone().map_err(anyhow::Error::msg)?;
    let row = ctx.name("rss-row");
    let size = 1u64 << 40;
    ctx.store
        .create(&row, CreateOptions::with_size(size))
        .await?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut child = std::process::Command::new(&bins.gateway)
        .args([
            "-c",
            &ctx.conf.display().to_string(),
            "--pool",
            &ctx.pool,
            "--export",
            &row,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let r = async {
        let uri = format!("nbd://127.0.0.1:{port}/{row}");
        let mut tries = 0;
        let probe = |n: u64| FioJob {
            target: FioTarget::Nbd { uri: uri.clone() },
            rw: "randwrite",
            bs: 4096,
            iodepth: 16,
            size,
            amount: Amount::Ios(n),
            seed: 3,
        };
        loop {
            match fio_bg(probe(16)).await? {
                Ok(_) => break,
                Err(e) if tries > 40 => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
            tries += 1;
        }
        // Growth between half and all of the writes: the map's cost per
        // grain, without the fixed start-up and buffer memory.
        let n = ctx.p.rss_grains;
        fio_bg(probe(n / 2)).await??;
        let before = rbd_row_bench::sysinfo::rss(child.id())?;
        fio_bg(probe(n - n / 2)).await??;
        let after = rbd_row_bench::sysinfo::rss(child.id())?;
        let written = (n - n / 2) * 4096;
        let per_tib = after.saturating_sub(before) as f64 * ((1u64 << 40) as f64 / written as f64)
            / f64::from(1u32 << 20);
        let mib = |x: u64| Cell::from_samples(&[x as f64 / f64::from(1u32 << 20)]);
        ctx.report.rows.push(Row::new(
            GROUP,
            &format!("gateway RSS, 1 TiB thin image, after {} random 4 KiB grains", n / 2),
            "MiB",
            mib(before),
        ));
        ctx.report.rows.push(Row::new(
            GROUP,
            &format!(
                "gateway RSS after {n} random 4 KiB grains ({} MiB) written",
                (n * 4096) >> 20
            ),
            "MiB",
            mib(after),
        ));
        ctx.report.rows.push(
            Row::new(
                GROUP,
                "gateway RSS growth per TiB written (the growth between the two rows above, scaled)",
                "MiB/TiB",
                Cell::from_samples(&[per_tib]),
            )
            .target(Target::value(
                "≤ 64 MiB per TiB written (issue 9)",
                false,
                64.0,
            )),
        );
        anyhow::Ok(())
    }
    .await;
    // SIGTERM: the gateway drains, flushes and releases the image.
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    remove_row_image(&ctx.store, &row).await?;
    r
}

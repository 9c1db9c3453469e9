//! Issue 12 row 3, the rolling schedule of ceph#49837: every round takes
//! snapshot n, writes random 4 KiB blocks and removes snapshot n-keep, on
//! native RBD (fio's rbd engine, `rbd snap`) and on rbd-row (fio's nbd
//! engine through the gateway, snapshots through the gateway's handle),
//! with a no-snapshot rbd-row control getting the same writes. Each system
//! has a pool of its own, so the pool's statistics are its stored bytes
//! and object count per round.

use crate::ctx::{alternate, fio_probe, iops, remove_row_image, Ctx};
use rbd_row_bench::ceph;
use rbd_row_bench::fio::{Amount, FioJob, FioTarget};
use rbd_row_bench::gateway::InProcGateway;
use rbd_row_bench::plot::Series;
use rbd_row_bench::results::{Cell, Row, Target};
use row_layer::CreateOptions;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

pub(crate) const GROUP: &str =
    "3. Rolling schedule (ceph#49837): snapshot n, random writes, remove n-5";
pub(crate) const NAT_POOL: &str = "rbdrow-bench-native";
pub(crate) const ROW_POOL: &str = "rbdrow-bench-row";

/// One round's figures.
#[derive(Debug, Clone, Default)]
pub(crate) struct Round {
    pub(crate) iops: [Option<f64>; 3],
    pub(crate) rm_s: [Option<f64>; 2],
    /// (stored bytes, objects) of the native and the rbd-row pool.
    pub(crate) pools: [(u64, u64); 2],
    /// What rbd-row's live views need (`space_usage().stored`).
    pub(crate) needed: u64,
}

pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Round>> {
    ceph::ensure_pool(NAT_POOL)?;
    ceph::ensure_pool(ROW_POOL)?;
    let nat = format!("{NAT_POOL}/{}", ctx.name("roll-nat"));
    let row = ctx.name("roll-row");
    let ctl = ctx.name("roll-ctl");
    let size = ctx.p.size;
    ctx.rbd(&["create", "--size", &(size >> 20).to_string(), &nat])?;
    let row_store = rbd_row_bench::gateway::store(&ctx.stores, ROW_POOL).await?;
    row_store
        .create(&row, CreateOptions::with_size(size))
        .await?;
    ctx.store
        .create(&ctl, CreateOptions::with_size(size))
        .await?;
    let gw = InProcGateway::start(ctx.stores.clone(), &ctx.pool).await?;
    let spec = format!("{ROW_POOL}/{row}");
    let r = rounds(ctx, &gw, &nat, &spec, &ctl).await;
    if let Ok(rounds) = &r {
        summarise(ctx, rounds);
        profile_missed(ctx, &gw, &spec).await;
    }
    gw.stop().await?;
    ceph::remove_native(&nat);
    for (store, n) in [(&row_store, &row), (&ctx.store, &ctl)] {
        if let Err(e) = remove_row_image(store, n).await {
            crate::progress!("cleanup of {n}: {e:#}");
        }
    }
    r
}

/// Profiles the rolling image's writes for each IOPS row that missed.
async fn profile_missed(ctx: &mut Ctx, gw: &InProcGateway, row: &str) {
    let missed: Vec<Row> = ctx
        .report
        .rows
        .iter()
        .filter(|r| r.group == GROUP && r.unit == "IOPS" && r.met() == Some(false))
        .cloned()
        .collect();
    for r in missed {
        let job = ctx.job(FioTarget::Nbd { uri: gw.uri(row) }, "randwrite", ctx.p.size);
        crate::profile::if_missed(ctx, &r, crate::profile::Subject::FioHere(job)).await;
    }
}

async fn rounds(
    ctx: &mut Ctx,
    gw: &InProcGateway,
    nat: &str,
    row: &str,
    ctl: &str,
) -> anyhow::Result<Vec<Round>> {
    let size = ctx.p.size;
    let (nat_pool, nat_img) = nat.split_once('/').unwrap_or((NAT_POOL, nat));
    let nat_target = FioTarget::Rbd {
        pool: nat_pool.into(),
        image: nat_img.into(),
        lib_dir: None,
        conf: Some(ctx.conf.clone()),
    };
    crate::progress!("filling the rolling images ({} MiB each)", size >> 20);
    let fill = FioJob {
        target: nat_target.clone(),
        rw: "write",
        bs: 4 << 20,
        iodepth: 16,
        size,
        amount: Amount::Ios(size / (4 << 20)),
        seed: 1,
    };
    tokio::task::spawn_blocking(move || fill.run()).await??;
    let img = gw.image(row).await?;
    rbd_row_bench::fill(&img, 4 << 20, 16).await?;
    rbd_row_bench::fill(&gw.image(ctl).await?, 4 << 20, 16).await?;
    let job = |t: FioTarget| {
        let mut j = ctx.job(t, "randwrite", size);
        j.amount = Amount::Ios(ctx.p.round_writes);
        j
    };
    let nbd = |n: &str| FioTarget::Nbd { uri: gw.uri(n) };
    let mut out = Vec::new();
    for n in 0..ctx.p.rounds {
        ctx.rbd(&["snap", "create", &format!("{nat}@s{n}")])?;
        img.snap_create(&format!("s{n}")).await?;
        let probes = [job(nat_target.clone()), job(nbd(row)), job(nbd(ctl))]
            .into_iter()
            .map(|j| fio_probe(Ok(j), iops))
            .collect();
        let c = alternate(probes, 1).await;
        let mut round = Round {
            iops: [c[0].median(), c[1].median(), c[2].median()],
            ..Round::default()
        };
        if let Some(Cell::NotRun(e)) = c.iter().find(|c| matches!(c, Cell::NotRun(_))) {
            anyhow::bail!("round {n}: {e}");
        }
        if n >= ctx.p.keep {
            let old = format!("s{}", n - ctx.p.keep);
            let t = ceph::timed(
                "rbd",
                &[
                    "-c",
                    &ctx.conf.display().to_string(),
                    "snap",
                    "rm",
                    "--no-progress",
                    &format!("{nat}@{old}"),
                ],
            )?;
            let t0 = Instant::now();
            img.snap_remove(&old).await?;
            round.rm_s = [Some(t.as_secs_f64()), Some(t0.elapsed().as_secs_f64())];
        }
        round.pools = both_pools()?;
        round.needed = img.space_usage()?.stored;
        crate::progress!("rolling round {n}: {:?}", round.iops);
        out.push(round);
    }
    // The pool statistics lag the I/O by the manager's period: the last
    // round's figures are read again once they have settled.
    tokio::time::sleep(Duration::from_secs(6)).await;
    if let Some(last) = out.last_mut() {
        last.pools = both_pools()?;
    }
    Ok(out)
}

/// (stored, objects) of the native and the rbd-row pool, from one `ceph df`.
fn both_pools() -> anyhow::Result<[(u64, u64); 2]> {
    let df = ceph::ceph_json(&["df", "detail"])?;
    Ok([
        ceph::pool_stats_in(&df, NAT_POOL)?,
        ceph::pool_stats_in(&df, ROW_POOL)?,
    ])
}

fn cell(v: impl Iterator<Item = Option<f64>>) -> Cell {
    let v: Vec<f64> = v.flatten().collect();
    Cell::from_samples(&v)
}

fn summarise(ctx: &mut Ctx, rounds: &[Round]) {
    let n = rounds.len();
    let tenth = (n / 10).max(1);
    for (label, range) in [("first", 0..tenth), ("last", n - tenth..n)] {
        let r = &rounds[range.clone()];
        ctx.report.rows.push(
            Row::new(
                GROUP,
                &format!(
                    "writes, {label} {} of {n} rounds (median over rounds)",
                    r.len()
                ),
                "IOPS",
                cell(r.iter().map(|x| x.iops[1])),
            )
            .native(cell(r.iter().map(|x| x.iops[0])))
            .control(cell(r.iter().map(|x| x.iops[2])))
            .target(Target::vs_control(
                "≥ 0.9× control (issue 9: in the control's band)",
                true,
                0.9,
            )),
        );
    }
    let rm: Vec<&Round> = rounds.iter().filter(|r| r.rm_s[0].is_some()).collect();
    ctx.report.rows.push(
        Row::new(
            GROUP,
            "snapshot removal (rbd-row in-process; native `rbd snap rm`, process start included)",
            "s",
            cell(rm.iter().map(|x| x.rm_s[1])),
        )
        .native(cell(rm.iter().map(|x| x.rm_s[0]))),
    );
    if let Some(last) = rounds.last() {
        let one = |x: u64| Cell::from_samples(&[x as f64]);
        ctx.report.rows.push(
            Row::new(
                GROUP,
                "pool stored bytes after the last round",
                "MiB",
                one(last.pools[1].0 >> 20),
            )
            .native(one(last.pools[0].0 >> 20)),
        );
        ctx.report.rows.push(
            Row::new(
                GROUP,
                "pool objects after the last round",
                "objects",
                one(last.pools[1].1),
            )
            .native(one(last.pools[0].1)),
        );
        if last.needed > 0 {
            ctx.report.rows.push(
                Row::new(
                    GROUP,
                    "rbd-row stored / what its live views need",
                    "ratio",
                    Cell::from_samples(&[last.pools[1].0 as f64 / last.needed as f64]),
                )
                .target(Target::value("≤ 1.1 (issue 9)", false, 1.1)),
            );
        }
    }
    ctx.report
        .sections
        .push(("Rolling schedule, per round".into(), table(rounds)));
}

fn table(rounds: &[Round]) -> String {
    let f = |x: Option<f64>| x.map_or("–".into(), rbd_row_bench::stats::fmt_num);
    let mut s = String::from("Pool figures are the cluster's statistics (`ceph df`), which the manager refreshes every few seconds, so a round's figure may show an earlier round's state; the last round is read again after 6 s.\n\n| round | native IOPS | rbd-row IOPS | control IOPS | rbd-row / native | native stored MiB | rbd-row stored MiB | native objects | rbd-row objects | rbd-row live views need MiB |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let every = (rounds.len() / 25).max(1);
    for (i, r) in rounds.iter().enumerate() {
        if i % every != 0 && i + 1 != rounds.len() {
            continue;
        }
        let ratio = match (r.iops[1], r.iops[0]) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let _ = writeln!(
            s,
            "| {i} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f(r.iops[0]),
            f(r.iops[1]),
            f(r.iops[2]),
            f(ratio),
            r.pools[0].0 >> 20,
            r.pools[1].0 >> 20,
            r.pools[0].1,
            r.pools[1].1,
            r.needed >> 20
        );
    }
    s
}

/// Plots: IOPS per round, and stored MiB and objects per round.
pub(crate) fn series(rounds: &[Round]) -> [Vec<Series>; 3] {
    let pts = |f: &dyn Fn(&Round) -> Option<f64>| -> Vec<(f64, f64)> {
        rounds
            .iter()
            .enumerate()
            .filter_map(|(i, r)| f(r).map(|y| (i as f64, y)))
            .collect()
    };
    let s = |name: &str, points| Series {
        name: name.into(),
        points,
    };
    [
        vec![
            s("native RBD", pts(&|r| r.iops[0])),
            s("rbd-row (NBD)", pts(&|r| r.iops[1])),
            s("rbd-row control, no snapshots", pts(&|r| r.iops[2])),
        ],
        vec![
            s(
                "native pool stored",
                pts(&|r| Some((r.pools[0].0 >> 20) as f64)),
            ),
            s(
                "rbd-row pool stored",
                pts(&|r| Some((r.pools[1].0 >> 20) as f64)),
            ),
            s(
                "rbd-row live views need",
                pts(&|r| Some((r.needed >> 20) as f64)),
            ),
        ],
        vec![
            s("native pool objects", pts(&|r| Some(r.pools[0].1 as f64))),
            s("rbd-row pool objects", pts(&|r| Some(r.pools[1].1 as f64))),
        ],
    ]
}

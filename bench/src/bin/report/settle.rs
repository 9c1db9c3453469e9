//! Between two rows of the report: remove whatever images of this run are
//! left (a row that failed or timed out may leave some), wait until the
//! cluster has given their space back, and record the pools' usage at the
//! start of the next row. Native RBD frees a removed snapshot's clones only
//! when the OSD trims it, and the OSD sleeps between trim batches (5 s on
//! a rotational device, which a test OSD on a file is), so a full run's
//! rolling step left tens of GiB of clones that filled the test OSD two
//! rows later. While it waits the report sets the trim sleeps to 0 and
//! puts them back before the next row measures anything.

use crate::ctx::{remove_row_image, Ctx};
use crate::rolling::{NAT_POOL, ROW_POOL};
use rbd_row_bench::ceph;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The OSD options the wait zeroes (and restores).
const TRIM_SLEEPS: [&str; 4] = [
    "osd_snap_trim_sleep",
    "osd_snap_trim_sleep_hdd",
    "osd_snap_trim_sleep_ssd",
    "osd_snap_trim_sleep_hybrid",
];

/// A fall of the raw usage smaller than this is noise.
const FALL: u64 = 32 << 20;

/// The pools' usage when a row started.
#[derive(Debug, Clone)]
pub(crate) struct PoolUse {
    pub(crate) row: String,
    /// (pool, stored bytes, objects) of the pools the report uses.
    pub(crate) pools: Vec<(String, u64, u64)>,
    /// Raw bytes used and total of the cluster.
    pub(crate) raw: (u64, u64),
    /// Seconds spent removing leftovers and waiting.
    pub(crate) waited: f64,
    /// Leftovers removed, a timeout, an error.
    pub(crate) note: String,
}

/// Cleans up and waits, then records the usage the row starts from.
pub(crate) async fn before_row(ctx: &mut Ctx, row: &str) {
    let t = Instant::now();
    let mut note = Vec::new();
    match sweep(ctx).await {
        Ok(0) => {}
        Ok(n) => note.push(format!("{n} leftover image(s) removed")),
        Err(e) => note.push(format!(
            "cleanup: {}",
            crate::ctx::first_line(&format!("{e:#}"))
        )),
    }
    if let Err(e) = wait(ctx).await {
        note.push(crate::ctx::first_line(&format!("{e:#}")));
    }
    let df = ceph::ceph_json(&["df", "detail"]).unwrap_or_default();
    let pools: Vec<(String, u64, u64)> = pools(ctx)
        .into_iter()
        .filter_map(|p| {
            ceph::pool_stats_in(&df, p)
                .ok()
                .map(|(s, o)| (p.to_owned(), s, o))
        })
        .collect();
    let raw = ceph::raw_usage_in(&df).unwrap_or((0, 0));
    let u = PoolUse {
        row: row.to_owned(),
        pools,
        raw,
        waited: t.elapsed().as_secs_f64(),
        note: note.join("; "),
    };
    crate::progress!(
        "before {row}: raw used {} of {} MiB after {:.0} s of cleanup{}",
        raw.0 >> 20,
        raw.1 >> 20,
        u.waited,
        if u.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", u.note)
        }
    );
    ctx.pool_log.push(u);
}

/// The pools the report writes in.
fn pools(ctx: &Ctx) -> [&str; 3] {
    [ctx.pool.as_str(), NAT_POOL, ROW_POOL]
}

/// Removes this run's images (their names end in the run's tag) from the
/// pools the report uses; returns how many it removed.
async fn sweep(ctx: &Ctx) -> anyhow::Result<usize> {
    let suffix = format!("-{}", ctx.tag);
    let existing = ceph::ceph_json(&["osd", "pool", "ls"])?;
    let exists = |p: &str| {
        existing
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(p)))
    };
    let mut n = 0;
    for pool in pools(ctx).into_iter().filter(|p| exists(p)) {
        for img in ctx
            .rbd(&["ls", pool])?
            .lines()
            .filter(|l| l.ends_with(&suffix))
        {
            ceph::remove_native(&format!("{pool}/{img}"));
            n += 1;
        }
        if pool == ctx.pool {
            raw_leftovers(ctx).await?;
        }
        let store = rbd_row_bench::gateway::store(&ctx.stores, pool).await?;
        for e in store.list().await? {
            if e.name.ends_with(&suffix) {
                remove_row_image(&store, &e.name).await?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The RADOS ceiling's objects of rows 1 and 2 (left behind when a row
/// was cut short; removing absent ones is not an error here).
async fn raw_leftovers(ctx: &Ctx) -> anyhow::Result<()> {
    let cluster = ctx
        .stores
        .cluster()
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?
        .ok_or_else(|| anyhow::anyhow!("not a Ceph target"))?;
    for ns in [ctx.name("raw"), ctx.name("scale-raw")] {
        let be = cluster.open_pool(&ctx.pool, &ns).await?;
        let _ = rbd_row_bench::raw::remove_raw_objects(&be).await;
    }
    Ok(())
}

/// PGs trimming snapshots or waiting to.
fn trimming() -> anyhow::Result<usize> {
    let v = ceph::ceph_json(&["pg", "dump", "pgs_brief"])?;
    let pgs = v["pg_stats"].as_array().or_else(|| v.as_array());
    Ok(pgs.map_or(0, |a| {
        a.iter()
            .filter(|p| p["state"].as_str().is_some_and(|s| s.contains("snaptrim")))
            .count()
    }))
}

/// Waits until no PG is trimming and the raw usage has stopped falling for
/// `settle_quiet`, or `settle_timeout` has passed; while PGs trim, their
/// sleeps are 0.
async fn wait(ctx: &Ctx) -> anyhow::Result<()> {
    let mut saved = None;
    let r = async {
        let t = Instant::now();
        let (mut low, mut since) = (u64::MAX, Instant::now());
        loop {
            let busy = trimming()?;
            if busy > 0 && saved.is_none() {
                saved = Some(zero_trim_sleeps()?);
            }
            if busy == 0 && since.elapsed() >= ctx.p.settle_quiet {
                return Ok(());
            }
            if t.elapsed() >= ctx.p.settle_timeout {
                anyhow::bail!(
                    "timed out: {busy} PG(s) still trimming or space still being freed after {} s; the row starts on a pool that is not empty",
                    ctx.p.settle_timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            // bluestore's own background work moves the figure by a few
            // MiB; only a real fall restarts the quiet period.
            let used = ceph::raw_usage()?.0;
            if used.saturating_add(FALL) < low {
                low = used;
                since = Instant::now();
            }
        }
    }
    .await;
    if let Some(s) = saved {
        restore_trim_sleeps(&s)?;
    }
    r
}

/// Sets the trim sleeps of section `osd` to 0, returning what the
/// configuration database held for them before (`None`: not set).
fn zero_trim_sleeps() -> anyhow::Result<Vec<(&'static str, Option<String>)>> {
    let dump = ceph::ceph_json(&["config", "dump"])?;
    let held = |name: &str| {
        dump.as_array().and_then(|a| {
            a.iter()
                .find(|e| e["section"] == "osd" && e["name"] == name)
                .and_then(|e| e["value"].as_str().map(str::to_owned))
        })
    };
    let saved: Vec<_> = TRIM_SLEEPS.iter().map(|n| (*n, held(n))).collect();
    for n in TRIM_SLEEPS {
        ceph::run("ceph", &["config", "set", "osd", n, "0"])?;
    }
    Ok(saved)
}

fn restore_trim_sleeps(saved: &[(&str, Option<String>)]) -> anyhow::Result<()> {
    for (n, v) in saved {
        match v {
            Some(v) => ceph::run("ceph", &["config", "set", "osd", n, v])?,
            None => ceph::run("ceph", &["config", "rm", "osd", n])?,
        };
    }
    Ok(())
}

/// The "pool usage at the start of each row" section.
pub(crate) fn table(log: &[PoolUse]) -> String {
    let mut s = String::from(
        "What the pools held when each row started, after the report removed the previous rows' images and waited for the cluster to give their space back (the OSDs' snapshot-trim sleeps set to 0 while it waited, restored before the row). Pool figures are `ceph df`'s, refreshed every few seconds.\n\n| row | pool: stored MiB / objects | raw used / total MiB | cleanup and wait, s | note |\n|---|---|---|---|---|\n",
    );
    for u in log {
        let pools: Vec<String> = u
            .pools
            .iter()
            .map(|(p, st, o)| format!("{p}: {} / {o}", st >> 20))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} / {} | {:.0} | {} |",
            u.row,
            pools.join(", "),
            u.raw.0 >> 20,
            u.raw.1 >> 20,
            u.waited,
            if u.note.is_empty() { "–" } else { &u.note }
        );
    }
    s
}

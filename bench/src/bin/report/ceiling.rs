//! Issue 12 row 1: the RADOS ceiling. Plain 4 KiB object writes through
//! row-rados at the report's concurrency, alternating with the compound op
//! an rbd-row write issues (write + one omap key) and with the engine's own
//! writes on a filled image (in-process, no NBD), so the gap between rbd-row
//! and RADOS can be split into the backend op and the engine.

use crate::ctx::Ctx;
use anyhow::anyhow;
use rbd_row_bench::raw::{rados_writes_for, remove_raw_objects};
use rbd_row_bench::results::{Cell, Row};
use row_layer::backend::Backend;
use row_layer::CreateOptions;
use std::sync::Arc;

pub(crate) const GROUP: &str = "1. RADOS ceiling: 4 KiB writes, 16 in flight";

pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let cluster = ctx
        .stores
        .cluster()
        .await
        .map_err(|e| anyhow!("{}", e.message))?
        .ok_or_else(|| anyhow!("not a Ceph target"))?;
    let ns = ctx.name("raw");
    let be: Arc<dyn Backend> = Arc::new(cluster.open_pool(&ctx.pool, &ns).await?);
    let name = ctx.name("engine");
    ctx.store
        .create(&name, CreateOptions::with_size(ctx.p.size.min(512 << 20)))
        .await?;
    let img = ctx.store.open(&name).await?;
    rbd_row_bench::fill(&img, 4 << 20, 16).await?;
    let (secs, depth) = (ctx.p.runtime, ctx.p.depth);
    rados_writes_for(be.clone(), secs / 4, depth, true).await?; // warm-up
    let mut s = [Vec::new(), Vec::new(), Vec::new()];
    let mut rate = 1000.0;
    for rep in 0..ctx.p.repeats.max(3) {
        for k in 0..3 {
            let i = (k + rep) % 3;
            let x = match i {
                0 => rados_writes_for(be.clone(), secs, depth, false).await?,
                1 => rados_writes_for(be.clone(), secs, depth, true).await?,
                // The engine's writes are counted: as many as the compound
                // op managed in the same time last, so each run lasts
                // about as long as the RADOS ones.
                _ => {
                    let ops = (rate * secs.as_secs_f64()).max(100.0) as u64;
                    rbd_row_bench::random_writes(&img, 4096, ops, depth, rep as u64)
                        .await?
                        .iops()
                }
            };
            if i == 1 {
                rate = x;
            }
            s[i].push(x);
        }
    }
    img.close().await?;
    ctx.store.remove(&name).await?;
    remove_raw_objects(be.as_ref()).await?;
    let ceiling = Cell::from_samples(&s[0]);
    ctx.report.rows.push(Row::new(
        GROUP,
        "RADOS 4 KiB object writes (the ceiling)",
        "IOPS",
        ceiling.clone(),
    ));
    ctx.report.rows.push(
        Row::new(
            GROUP,
            "RADOS write + one omap key (the op an rbd-row write issues)",
            "IOPS",
            Cell::from_samples(&s[1]),
        )
        .ceiling(ceiling.clone()),
    );
    ctx.report.rows.push(
        Row::new(
            GROUP,
            "rbd-row engine writes, in-process (no NBD)",
            "IOPS",
            Cell::from_samples(&s[2]),
        )
        .ceiling(ceiling.clone()),
    );
    ctx.ceiling = Some(ceiling);
    Ok(())
}

//! Issue 12 row 4, fragmentation: 1 MiB sequential reads of a filled image
//! after many snapshots, each followed by random 4 KiB overwrites, against
//! an rbd-row control that got the same overwrites and no snapshot, and
//! native RBD with the same snapshots and overwrites. rbd-row's reads go
//! through the gateway (fio's nbd engine), native's through librbd. Then
//! one defragmentation pass (row-layer's defrag.rs) and the same reads
//! again, with the pass's time and space cost as a note.

use crate::ctx::{alternate, fio_probe, mib_s, remove_row_image, Ctx};
use rbd_row_bench::ceph;
use rbd_row_bench::fio::{Amount, FioJob, FioTarget};
use rbd_row_bench::gateway::InProcGateway;
use rbd_row_bench::results::{Cell, Row, Target};
use row_layer::{CreateOptions, DefragOptions, DefragReport};

pub(crate) const GROUP: &str =
    "4. Fragmentation: 1 MiB sequential reads after snapshots of random 4 KiB overwrites";

pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (nat, row, ctl) = (
        ctx.name("frag-nat"),
        ctx.name("frag-row"),
        ctx.name("frag-ctl"),
    );
    let size = ctx.p.size;
    ctx.rbd(&[
        "create",
        "--size",
        &(size >> 20).to_string(),
        &ctx.spec(&nat),
    ])?;
    for n in [&row, &ctl] {
        ctx.store.create(n, CreateOptions::with_size(size)).await?;
    }
    let gw = InProcGateway::start(ctx.stores.clone(), &ctx.pool).await?;
    let r = measure(ctx, &gw, &nat, &row, &ctl).await;
    gw.stop().await?;
    ceph::remove_native(&ctx.spec(&nat));
    for n in [&row, &ctl] {
        if let Err(e) = remove_row_image(&ctx.store, n).await {
            crate::progress!("cleanup of {n}: {e:#}");
        }
    }
    r
}

fn native_job(
    ctx: &Ctx,
    image: &str,
    rw: &'static str,
    bs: u64,
    amount: Amount,
    seed: u64,
) -> FioJob {
    FioJob {
        target: ctx.native_target(image),
        rw,
        bs,
        iodepth: 16,
        size: ctx.p.size,
        amount,
        seed,
    }
}

async fn measure(
    ctx: &mut Ctx,
    gw: &InProcGateway,
    nat: &str,
    row: &str,
    ctl: &str,
) -> anyhow::Result<()> {
    let size = ctx.p.size;
    let (k, w) = (ctx.p.frag_snaps, ctx.p.frag_writes);
    crate::progress!("fragmentation: filling, then {k} snapshots × {w} random 4 KiB writes");
    let fill = native_job(ctx, nat, "write", 4 << 20, Amount::Ios(size / (4 << 20)), 1);
    tokio::task::spawn_blocking(move || fill.run()).await??;
    let (ri, ci) = (gw.image(row).await?, gw.image(ctl).await?);
    rbd_row_bench::fill(&ri, 4 << 20, 16).await?;
    rbd_row_bench::fill(&ci, 4 << 20, 16).await?;
    for s in 0..k {
        let seed = 500 + u64::from(s);
        ctx.rbd(&["snap", "create", &format!("{}@f{s}", ctx.spec(nat))])?;
        let job = native_job(ctx, nat, "randwrite", 4096, Amount::Ios(w), seed);
        tokio::task::spawn_blocking(move || job.run()).await??;
        ri.snap_create(&format!("f{s}")).await?;
        for img in [&ri, &ci] {
            rbd_row_bench::random_writes(img, 4096, w, 16, seed).await?;
            img.flush().await?;
        }
    }
    let nbd = |n: &str| FioTarget::Nbd { uri: gw.uri(n) };
    let c = alternate(probes(ctx, nat, nbd(row), nbd(ctl)), ctx.p.repeats).await;
    let r = read_row(
        &format!(
            "{} MiB image, {k} snapshots × {} MiB of overwrites, 1 MiB reads, 4 in flight",
            size >> 20,
            (w * 4096) >> 20
        ),
        &c,
    );
    let again = seq(ctx, nbd(row));
    if r.met() == Some(false) {
        ctx.report.notes.push((
            GROUP.into(),
            "**Why the first row misses:** reads already coalesce the runs of one source object that lie \
             within 128 KiB of each other (row-layer's read_plan.rs), but after many snapshots of scattered \
             4 KiB overwrites a 1 MiB read still spans runs of several epochs' objects, each its own RADOS \
             read, where the control reads one object. The defragmenter (row-layer's defrag.rs; `rbd-row \
             defrag`, or `rbd-gateway --defrag-interval` in the background) rewrites the head's grains of \
             such objects into the head epoch: the second row is the same reads after one pass."
                .into(),
        ));
    }
    crate::profile::if_missed(ctx, &r, crate::profile::Subject::FioHere(again)).await;
    ctx.report.rows.push(r);
    let (pass, note) = defragment(&ri).await?;
    crate::progress!("fragmentation: {note}");
    ctx.report.notes.push((GROUP.into(), note));
    let c = alternate(probes(ctx, nat, nbd(row), nbd(ctl)), ctx.p.repeats).await;
    let r = read_row(
        &format!(
            "the same reads after one defragmentation pass ({} of {} objects rewritten)",
            pass.objects_rewritten,
            size / (4 << 20)
        ),
        &c,
    );
    let again = seq(ctx, nbd(row));
    crate::profile::if_missed(ctx, &r, crate::profile::Subject::FioHere(again)).await;
    ctx.report.rows.push(r);
    Ok(())
}

/// A row of the group from the cells of native, rbd-row and the control.
fn read_row(label: &str, c: &[Cell]) -> Row {
    Row::new(GROUP, label, "MiB/s", c[1].clone())
        .native(c[0].clone())
        .control(c[2].clone())
        .target(Target::vs_control(
            "≥ 0.9× control (issues 9, 12)",
            true,
            0.9,
        ))
}

/// A 1 MiB sequential read of the whole image, 4 in flight.
fn seq(ctx: &Ctx, t: FioTarget) -> FioJob {
    let mut j = ctx.job(t, "read", ctx.p.size);
    j.bs = 1 << 20;
    j.iodepth = 4;
    j
}

/// The reads of native, rbd-row and the control, in that order.
fn probes(
    ctx: &Ctx,
    nat: &str,
    row: FioTarget,
    ctl: FioTarget,
) -> Vec<Result<crate::ctx::Probe, String>> {
    [
        seq(ctx, ctx.native_target(nat)),
        seq(ctx, row),
        seq(ctx, ctl),
    ]
    .into_iter()
    .map(|j| fio_probe(Ok(j), mib_s))
    .collect()
}

/// One unpaced defragmentation pass with the CLI's defaults on the
/// gateway's own handle; its report and a note on its time and space.
async fn defragment(img: &row_layer::Image) -> anyhow::Result<(DefragReport, String)> {
    let stored_before = img.space_usage()?.stored;
    let t = std::time::Instant::now();
    let r = img.defragment(&DefragOptions::default()).await?;
    let secs = t.elapsed().as_secs_f64();
    let stored_after = img.space_usage()?.stored;
    let note = format!(
        "**Defragmentation pass** (`DefragOptions::default()`: objects whose whole read takes ≥ 4 RADOS \
         reads, no rate limit), beside no other I/O: {} of {} candidate objects rewritten, {} MiB in \
         {secs:.1} s ({:.0} MiB/s); a whole-object read of them took {} RADOS reads before and {} after. \
         Space: {} MiB stored before, {} MiB after (the snapshots keep the old copies until they are \
         removed).",
        r.objects_rewritten,
        r.objects_examined,
        r.bytes_rewritten >> 20,
        (r.bytes_rewritten >> 20) as f64 / secs.max(1e-9),
        r.reads_before,
        r.reads_after,
        stored_before >> 20,
        stored_after >> 20,
    );
    Ok((r, note))
}

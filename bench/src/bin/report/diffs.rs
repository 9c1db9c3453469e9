//! Issue 12 row 5 (diff and export-diff) and the rollback part of row 6, on
//! thin images of growing size: snapshot a, `changed` random 4 KiB writes,
//! snapshot b. Then `rbd diff --from-snap a` (fast-diff on, the default
//! features) against `rbd-row diff --from-snap a`, the bytes `export-diff`
//! writes for each, and, after as many writes again, `snap rollback` to b.
//! Every time is of the command-line tool, process start included, on both
//! sides.

use crate::ctx::{first_line, remove_row_image, Bins, Ctx};
use crate::profile::{self, Subject};
use rbd_row_bench::ceph;
use rbd_row_bench::fio::{Amount, FioJob};
use rbd_row_bench::plot::Series;
use rbd_row_bench::results::{Cell, Row, Target};
use row_layer::CreateOptions;
use std::time::Duration;

pub(crate) const GROUP: &str = "5. Diff and export-diff of thin images";
pub(crate) const ROLLBACK: &str = "6a. Rollback of thin images";

/// Per image size: (GiB, diff native, diff rbd-row, rollback native, rollback rbd-row) in s.
pub(crate) type Points = Vec<(f64, [Option<f64>; 4])>;

fn gib(size: u64) -> String {
    if size >= 1 << 40 {
        format!("{} TiB", size >> 40)
    } else {
        format!("{} GiB", size >> 30)
    }
}

pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<Points> {
    let bins = ctx.bins.clone().map_err(anyhow::Error::msg)?;
    let mut sizes: Vec<u64> = ctx
        .p
        .diff_sizes
        .iter()
        .chain(&ctx.p.rollback_sizes)
        .copied()
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut pts = Points::new();
    for size in sizes {
        let (nat, row) = (
            ctx.name(&format!("diff-nat-{}", size >> 30)),
            ctx.name(&format!("diff-row-{}", size >> 30)),
        );
        let r = one_size(ctx, &bins, size, &nat, &row).await;
        ceph::remove_native(&ctx.spec(&nat));
        if let Err(e) = remove_row_image(&ctx.store, &row).await {
            crate::progress!("cleanup of {row}: {e:#}");
        }
        match r {
            Ok(p) => pts.push(((size >> 30) as f64, p)),
            Err(e) => ctx.report.rows.push(Row::not_run(
                GROUP,
                &format!("{} image", gib(size)),
                "s",
                &first_line(&format!("{e:#}")),
            )),
        }
    }
    Ok(pts)
}

/// `changed` random 4 KiB writes on both images.
async fn writes(
    ctx: &Ctx,
    size: u64,
    nat: &str,
    img: &row_layer::Image,
    seed: u64,
) -> anyhow::Result<()> {
    let job = FioJob {
        target: ctx.native_target(nat),
        rw: "randwrite",
        bs: 4096,
        iodepth: 16,
        size,
        amount: Amount::Ios(ctx.p.diff_changed),
        seed,
    };
    tokio::task::spawn_blocking(move || job.run()).await??;
    rbd_row_bench::random_writes(img, 4096, ctx.p.diff_changed, 16, seed).await?;
    img.flush().await?;
    Ok(())
}

async fn one_size(
    ctx: &mut Ctx,
    bins: &Bins,
    size: u64,
    nat: &str,
    row: &str,
) -> anyhow::Result<[Option<f64>; 4]> {
    crate::progress!("diff/rollback on {} thin images", gib(size));
    let (nspec, rspec) = (ctx.spec(nat), ctx.spec(row));
    ctx.rbd(&["create", "--size", &(size >> 20).to_string(), &nspec])?;
    ctx.store
        .create(row, CreateOptions::with_size(size))
        .await?;
    let img = ctx.store.open(row).await?;
    ctx.rbd(&["snap", "create", &format!("{nspec}@a")])?;
    img.snap_create("a").await?;
    writes(ctx, size, nat, &img, 7).await?;
    ctx.rbd(&["snap", "create", &format!("{nspec}@b")])?;
    img.snap_create("b").await?;
    let mut out = [None; 4];
    if ctx.p.diff_sizes.contains(&size) {
        img.close().await?;
        out[..2].copy_from_slice(&diff_rows(ctx, bins, size, &nspec, &rspec).await?);
        let img = ctx.store.open(row).await?;
        writes(ctx, size, nat, &img, 8).await?;
        img.close().await?;
    } else {
        writes(ctx, size, nat, &img, 8).await?;
        img.close().await?;
    }
    if ctx.p.rollback_sizes.contains(&size) {
        out[2..].copy_from_slice(&rollback_row(ctx, bins, size, &nspec, &rspec).await?);
    }
    Ok(out)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Times `prog args` `repeats` times for each of the two, alternating.
async fn alternate_cmds(
    ctx: &Ctx,
    a: (String, Vec<String>),
    b: (String, Vec<String>),
) -> anyhow::Result<[Cell; 2]> {
    let mut s = [Vec::new(), Vec::new()];
    for rep in 0..ctx.p.repeats {
        for k in 0..2 {
            let i = (k + rep) % 2;
            let (prog, args) = if i == 0 { a.clone() } else { b.clone() };
            let t = tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                ceph::timed(&prog, &args)
            })
            .await??;
            s[i].push(secs(t));
        }
    }
    Ok([Cell::from_samples(&s[0]), Cell::from_samples(&s[1])])
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

async fn diff_rows(
    ctx: &mut Ctx,
    bins: &Bins,
    size: u64,
    nspec: &str,
    rspec: &str,
) -> anyhow::Result<[Option<f64>; 2]> {
    let conf = ctx.conf.display().to_string();
    let rbd_row = bins.rbd_row.display().to_string();
    let (nb, rb) = (format!("{nspec}@b"), format!("{rspec}@b"));
    let [n, r] = alternate_cmds(
        ctx,
        (
            "rbd".into(),
            strs(&["-c", &conf, "diff", "--from-snap", "a", &nb]),
        ),
        (
            rbd_row.clone(),
            strs(&["-c", &conf, "diff", "--from-snap", "a", &rb]),
        ),
    )
    .await?;
    let out = [n.median(), r.median()];
    let changed = ctx.p.diff_changed;
    let mut diff = Row::new(
        GROUP,
        &format!(
            "`diff --from-snap`, {} image, {changed} changed 4 KiB blocks",
            gib(size)
        ),
        "s",
        r,
    )
    .native(n);
    if size >= 1 << 40 {
        diff = diff.target(Target::vs_native(
            "≥ 100× faster than native (issue 9)",
            false,
            0.01,
        ));
    }
    let again = strs(&["-c", &conf, "diff", "--from-snap", "a", &rb]);
    profile::if_missed(ctx, &diff, Subject::Command(rbd_row.clone(), again)).await;
    ctx.report.rows.push(diff);
    let (nf, rf) = (ctx.tmp.path().join("n.diff"), ctx.tmp.path().join("r.diff"));
    let (nfs, rfs) = (nf.display().to_string(), rf.display().to_string());
    let [nt, rt] = alternate_cmds(
        ctx,
        fresh_output(
            &nfs,
            "rbd",
            &[
                "-c",
                &conf,
                "export-diff",
                "--no-progress",
                "--from-snap",
                "a",
                &nb,
                &nfs,
            ],
        ),
        fresh_output(
            &rfs,
            &rbd_row,
            &[
                "-c",
                &conf,
                "--no-progress",
                "export-diff",
                "--from-snap",
                "a",
                &rb,
                &rfs,
            ],
        ),
    )
    .await?;
    let mb = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).ok();
    let (nmb, rmb) = (mb(&nf), mb(&rf));
    let _ = (std::fs::remove_file(&nf), std::fs::remove_file(&rf));
    let mut t = Row::new(
        GROUP,
        &format!("`export-diff` time, {} image", gib(size)),
        "s",
        rt,
    )
    .native(nt);
    if size >= 1 << 40 {
        t = t.target(Target::vs_native(
            "≥ 100× faster than native (issue 9)",
            false,
            0.01,
        ));
    }
    let (p, a) = fresh_output(
        &rfs,
        &rbd_row,
        &[
            "-c",
            &conf,
            "--no-progress",
            "export-diff",
            "--from-snap",
            "a",
            &rb,
            &rfs,
        ],
    );
    profile::if_missed(ctx, &t, Subject::Command(p, a)).await;
    ctx.report.rows.push(t);
    let one = |x: Option<f64>| {
        x.map_or(Cell::NotRun("no output file".into()), |x| {
            Cell::from_samples(&[x])
        })
    };
    ctx.report.rows.push(
        Row::new(
            GROUP,
            &format!("`export-diff` bytes, {} image", gib(size)),
            "MB",
            one(rmb),
        )
        .native(one(nmb)),
    );
    Ok(out)
}

/// `prog args` through `sh`, which first removes `out` (export-diff
/// refuses to overwrite its output; the shell costs both sides alike).
fn fresh_output(out: &str, prog: &str, args: &[&str]) -> (String, Vec<String>) {
    let mut v = strs(&["-c", "rm -f \"$0\" && exec \"$@\"", out, prog]);
    v.extend(strs(args));
    ("sh".into(), v)
}

async fn rollback_row(
    ctx: &mut Ctx,
    bins: &Bins,
    size: u64,
    nspec: &str,
    rspec: &str,
) -> anyhow::Result<[Option<f64>; 2]> {
    let conf = ctx.conf.display().to_string();
    let (nb, rb) = (format!("{nspec}@b"), format!("{rspec}@b"));
    let n = ceph::timed(
        "rbd",
        &["-c", &conf, "snap", "rollback", "--no-progress", &nb],
    )?;
    let r = ceph::timed(
        &bins.rbd_row.display().to_string(),
        &["-c", &conf, "--no-progress", "snap", "rollback", &rb],
    )?;
    let (n, r) = (secs(n), secs(r));
    let row = Row::new(
        ROLLBACK,
        &format!(
            "`snap rollback`, {} thin image, {} blocks written since the snapshot",
            gib(size),
            ctx.p.diff_changed
        ),
        "s",
        Cell::from_samples(&[r]),
    )
    .native(Cell::from_samples(&[n]))
    .target(Target::vs_native(
        "≥ 100× faster than native (issue 9)",
        false,
        0.01,
    ));
    if ctx.p.profile_missed && row.met() == Some(false) {
        // A second rollback to b would discard nothing: the blocks are
        // written again first, so the profiled rollback does what the
        // measured one did.
        let img = ctx
            .store
            .open(rspec.rsplit('/').next().unwrap_or(rspec))
            .await?;
        rbd_row_bench::random_writes(&img, 4096, ctx.p.diff_changed, 16, 9).await?;
        img.flush().await?;
        img.close().await?;
        let again = strs(&["-c", &conf, "--no-progress", "snap", "rollback", &rb]);
        let prog = bins.rbd_row.display().to_string();
        profile::if_missed(ctx, &row, Subject::Command(prog, again)).await;
    }
    ctx.report.rows.push(row);
    Ok([Some(n), Some(r)])
}

/// Diff and rollback time against image size.
pub(crate) fn series(p: &Points) -> Vec<Series> {
    [
        "native `rbd diff`",
        "`rbd-row diff`",
        "native rollback",
        "rbd-row rollback",
    ]
    .iter()
    .enumerate()
    .map(|(i, n)| Series {
        name: (*n).into(),
        points: p
            .iter()
            .filter_map(|(x, v)| v[i].map(|y| (*x, y)))
            .collect(),
    })
    .filter(|s| !s.points.is_empty())
    .collect()
}

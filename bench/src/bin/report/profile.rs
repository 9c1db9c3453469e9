//! Where a row misses its target, issue 12 wants the profile next to it:
//! the rbd-row side of the step is run again for a few seconds under
//! `perf record -g`, and the hottest symbols (`perf report --stdio`, flat)
//! go under the row's table in RESULTS.md. rbd-row runs where the step ran
//! it: in this process for the gateway and in-process rows (perf attaches
//! to the report's pid while the workload runs), inside fio for the C ABI
//! rows and inside the CLI for diff and rollback (perf starts the command).

use crate::ctx::{first_line, Ctx};
use rbd_row_bench::fio::{Amount, FioJob};
use rbd_row_bench::proc;
use rbd_row_bench::results::Row;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What to run again under the profiler.
pub(crate) enum Subject {
    /// A fio job whose rbd-row side is this process (the in-process gateway).
    FioHere(FioJob),
    /// A fio job whose rbd-row side is fio itself (the C ABI drop-in).
    FioItself(FioJob),
    /// A command-line tool (`rbd-row diff`…), profiled whole.
    Command(String, Vec<String>),
}

/// Symbols listed per profile.
const TOP: usize = 12;

/// Profiles `row`'s rbd-row side if the row missed its target and the run
/// profiles missed rows; the table (or why there is none) becomes a note
/// under the row's group.
pub(crate) async fn if_missed(ctx: &mut Ctx, row: &Row, subject: Subject) {
    if !ctx.p.profile_missed || row.met() != Some(false) {
        return;
    }
    crate::progress!("profiling the missed row: {}", row.name);
    let file = ctx
        .tmp
        .path()
        .join(format!("perf-{}.data", ctx.report.notes.len()));
    let secs = ctx.p.profile_secs;
    let body = match record(subject, &file, secs).await {
        Ok(()) => match top(&file) {
            Ok(t) => t,
            Err(e) => format!("(no profile: {})", first_line(&format!("{e:#}"))),
        },
        Err(e) => format!("(no profile: {})", first_line(&format!("{e:#}"))),
    };
    let _ = std::fs::remove_file(&file);
    ctx.report.notes.push((
        row.group.clone(),
        format!(
            "**Profile of the missed row \"{}\"** ({} s of its rbd-row side under `perf record -g`; `perf report --no-children --sort dso,symbol`, top {TOP}):\n\n{body}",
            row.name,
            secs.as_secs()
        ),
    ));
}

fn perf_record(file: &Path) -> Command {
    let mut c = Command::new("perf");
    c.args(["record", "-g", "-F", "499", "-q", "-o"]).arg(file);
    c
}

async fn record(subject: Subject, file: &Path, secs: Duration) -> anyhow::Result<()> {
    let limit = secs + Duration::from_secs(120);
    let timed = |mut j: FioJob| {
        j.amount = Amount::Time(secs);
        j
    };
    match subject {
        Subject::FioHere(job) => {
            let job = timed(job);
            let mut perf = perf_record(file);
            perf.args(["-p", &std::process::id().to_string(), "--", "sleep"])
                .arg(secs.as_secs().to_string());
            let p = tokio::task::spawn_blocking(move || proc::output(&mut perf, limit));
            let f = tokio::task::spawn_blocking(move || job.run());
            let (p, f) = (p.await?, f.await?);
            check(p?)?;
            f?;
        }
        Subject::FioItself(job) => {
            let fio = timed(job).command();
            let mut perf = perf_record(file);
            perf.arg("--").arg(fio.get_program()).args(fio.get_args());
            for (k, v) in fio.get_envs() {
                if let Some(v) = v {
                    perf.env(k, v);
                }
            }
            check(tokio::task::spawn_blocking(move || proc::output(&mut perf, limit)).await??)?;
        }
        Subject::Command(prog, args) => {
            let mut perf = perf_record(file);
            perf.arg("--").arg(prog).args(args);
            check(tokio::task::spawn_blocking(move || proc::output(&mut perf, limit)).await??)?;
        }
    }
    Ok(())
}

fn check(o: std::process::Output) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.status.success(),
        "perf record: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(())
}

/// The `TOP` hottest (object, symbol) pairs as a markdown table.
fn top(file: &Path) -> anyhow::Result<String> {
    let mut c = Command::new("perf");
    c.args([
        "report",
        "--stdio",
        "--no-children",
        "-g",
        "none",
        "--sort",
        "dso,symbol",
        "-i",
    ])
    .arg(file);
    let o = proc::output(&mut c, Duration::from_secs(300))?;
    anyhow::ensure!(
        o.status.success(),
        "perf report: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    let rows = parse_report(&String::from_utf8_lossy(&o.stdout));
    anyhow::ensure!(!rows.is_empty(), "perf report listed no samples");
    let mut s = String::from("| overhead | object | symbol |\n|---|---|---|\n");
    for (pct, dso, sym) in rows.iter().take(TOP) {
        let sym = if sym.chars().count() > 100 {
            format!("{}…", sym.chars().take(100).collect::<String>())
        } else {
            sym.clone()
        };
        let _ = writeln!(
            s,
            "| {pct} | {dso} | `{}` |",
            sym.replace('|', "/").replace('`', "'")
        );
    }
    Ok(s)
}

/// (overhead, object, symbol) of `perf report --stdio -g none --sort
/// dso,symbol` lines (`  25.97%  libc.so.6  [.] __strcmp_evex`).
fn parse_report(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let l = l.trim();
            let (pct, rest) = l.split_once(char::is_whitespace)?;
            pct.strip_suffix('%')?.parse::<f64>().ok()?;
            let rest = rest.trim_start();
            let (dso, sym) = rest.split_once(" [")?;
            // Columns after the symbol (perf pads them with "-") are cut at
            // the first run of two spaces.
            let sym = sym.split_once("] ").map_or("", |(_, s)| s);
            let sym = sym.split("  ").next().unwrap_or("").trim();
            Some((pct.to_owned(), dso.trim().to_owned(), sym.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_perf_report_lines() {
        let out = "# Samples: 824\n#\n    25.97%  libc.so.6             [.] __strcmp_evex                    -      -\n     4.37%  report  [.] row_layer::read_plan::plan\n\nnoise line\n";
        let r = super::parse_report(out);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            ("25.97%".into(), "libc.so.6".into(), "__strcmp_evex".into())
        );
        assert_eq!(r[1].2, "row_layer::read_plan::plan");
    }
}

//! RESULTS.md in parts: each row of issue 12 is written to its own file,
//! `<out>/results/report/row-<n>.md`, with the header of the run that
//! measured it, and RESULTS.md is assembled from whatever row files exist
//! plus the single-purpose benches' records (`rbd_row_bench::record`).
//!
//! Why: a full run takes longer than one sitting on a 2-core machine, and a
//! row re-run after a fix (`--rows 6`) must not throw away the other rows'
//! real figures. Each part says when and how it was measured, so a table
//! assembled from several runs never passes for one run.

use crate::ctx::Ctx;
use rbd_row_bench::record;
use rbd_row_bench::results::Report;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How far `ctx.report` had grown when a row started, so that what the row
/// added can be cut out of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    rows: usize,
    notes: usize,
    sections: usize,
    plots: usize,
    pools: usize,
}

impl Mark {
    pub(crate) fn of(ctx: &Ctx) -> Mark {
        Mark {
            rows: ctx.report.rows.len(),
            notes: ctx.report.notes.len(),
            sections: ctx.report.sections.len(),
            plots: ctx.report.plots.len(),
            pools: ctx.pool_log.len(),
        }
    }
}

/// Directory of the row files under the report's output directory.
pub(crate) fn dir(out: &Path) -> PathBuf {
    out.join("results").join("report")
}

/// A finished row's part: the run's header, the row's duration, and what
/// the row added to the report since `mark`. A run killed inside a row
/// leaves that row's previous part in place.
pub(crate) fn part(ctx: &Ctx, mark: Mark, secs: f64) -> Report {
    let r = &ctx.report;
    let mut p = Report {
        about: r.about.clone(),
        rows: r.rows[mark.rows..].to_vec(),
        notes: r.notes[mark.notes..].to_vec(),
        sections: r.sections[mark.sections..].to_vec(),
        plots: r.plots[mark.plots..].to_vec(),
    };
    p.about.push((
        "Duration".into(),
        format!("{secs:.0} s, with the cleanup before the row"),
    ));
    if ctx.pool_log.len() > mark.pools {
        let t = crate::settle::table(&ctx.pool_log[mark.pools..]);
        p.sections
            .insert(0, ("Pool usage at the start of the row".into(), t));
    }
    p
}

/// Writes row `n`'s part.
pub(crate) fn write(out: &Path, n: u8, title: &str, part: &Report) -> anyhow::Result<()> {
    let d = dir(out);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(format!("row-{n}.md")), part.markdown(title))?;
    Ok(())
}

/// The row files present, in row order, as `(n, markdown)`.
fn rows_present(out: &Path) -> anyhow::Result<Vec<(u8, String)>> {
    let mut v = Vec::new();
    for n in 1..=6u8 {
        let p = dir(out).join(format!("row-{n}.md"));
        if p.is_file() {
            v.push((n, std::fs::read_to_string(&p)?));
        }
    }
    Ok(v)
}

/// `(rows, met, missed)` of a rendered table: counted on the verdict
/// column that `results::Row::markdown` writes.
fn verdicts(md: &str) -> (usize, usize, usize) {
    // A results row has the 11 cells of `results::Row::markdown`; profile
    // and pool-usage tables have fewer.
    let table_rows = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| measurement |"))
        .filter(|l| l.matches('|').count() == 12)
        .count();
    let met = md.lines().filter(|l| l.ends_with("| met |")).count();
    let missed = md.lines().filter(|l| l.ends_with("| **missed** |")).count();
    (table_rows, met, missed)
}

/// RESULTS.md: a short header, the row parts (headings one level down),
/// then the records of the single-purpose benches in `records`.
pub(crate) fn assemble(out: &Path, records: &Path) -> anyhow::Result<String> {
    let parts = rows_present(out)?;
    let recs = record::collect(records)?;
    let mut s = String::from("# rbd-row benchmark results\n\n");
    s.push_str(
        "- **How this file is made:** `report` writes each row of issue 12 to \
         `results/report/row-<n>.md` with the header of the run that measured it \
         (command, date, machine, Ceph, duration), and assembles this file from the \
         row files present; `--rows` re-runs some rows and keeps the others. The \
         single-purpose benches write `results/<bench>.md` (last section).\n",
    );
    let all: Vec<&str> = parts.iter().map(|(_, m)| m.as_str()).collect();
    let (rows, met, missed) = verdicts(&all.join("\n"));
    let listed: Vec<String> = parts.iter().map(|(n, _)| n.to_string()).collect();
    let absent: Vec<String> = (1..=6u8)
        .filter(|n| parts.iter().all(|(p, _)| p != n))
        .map(|n| n.to_string())
        .collect();
    let _ = writeln!(
        s,
        "- **Summary:** report rows {} present (not run yet: {}); {rows} rows, targets met {met}, missed {missed}",
        listed.join(", "),
        if absent.is_empty() { "none".into() } else { absent.join(", ") }
    );
    let (brows, bmet, bmissed) = verdicts(
        &recs
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let _ = writeln!(
        s,
        "- **Single-purpose benches:** {} records; {brows} rows, targets met {bmet}, missed {bmissed}",
        recs.len()
    );
    for (_, md) in &parts {
        let _ = write!(s, "\n{}\n", record::demote_headings(md, 1));
    }
    if !recs.is_empty() {
        s.push_str("\n# Single-purpose benches\n\nEach was run on its own; its header says how.\n");
        for (_, md) in &recs {
            let _ = write!(s, "\n{}\n", record::demote_headings(md, 1));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbd_row_bench::results::{Cell, Row, Target};

    fn table(met: bool) -> Report {
        let mut r = Report::default();
        r.about.push(("Command".into(), "`x`".into()));
        let bound = if met { 1.0 } else { 100.0 };
        r.rows.push(
            Row::new(
                "2. Snapshot scaling",
                "writes",
                "IOPS",
                Cell::from_samples(&[5.0]),
            )
            .control(Cell::from_samples(&[5.0]))
            .target(Target::vs_control("≥ x", true, bound)),
        );
        r
    }

    #[test]
    fn parts_from_different_runs_are_assembled_and_counted() {
        let out = tempfile::tempdir().expect("tmp");
        let recs = tempfile::tempdir().expect("tmp");
        write(out.path(), 2, "Row 2", &table(true)).expect("w");
        write(out.path(), 5, "Row 5", &table(false)).expect("w");
        std::fs::write(
            recs.path().join("snap-ops.md"),
            "# snap-ops\n\n| measurement |\n| overhead | object | symbol |\n",
        )
        .expect("w");
        let md = assemble(out.path(), recs.path()).expect("assemble");
        assert!(
            md.contains("report rows 2, 5 present (not run yet: 1, 3, 4, 6); 2 rows, targets met 1, missed 1"),
            "{md}"
        );
        assert!(md.contains("\n## Row 2\n"), "{md}");
        assert!(md.contains("\n### 2. Snapshot scaling\n"), "{md}");
        assert!(md.contains("\n## snap-ops\n"), "{md}");
        assert!(
            md.contains("- **Single-purpose benches:** 1 records; 0 rows"),
            "{md}"
        );
        // A re-run of row 5 replaces only row 5.
        write(out.path(), 5, "Row 5", &table(true)).expect("w");
        let md = assemble(out.path(), recs.path()).expect("assemble");
        assert!(md.contains("targets met 2, missed 0"), "{md}");
    }
}

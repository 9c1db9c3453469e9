//! The report's table: one [`Row`] per measured claim, with rbd-row's
//! figure, the figures it is compared with (native RBD, the no-snapshot
//! control, the RADOS ceiling), the ratios and the target's verdict, and the
//! markdown rendering of `bench/RESULTS.md`. A row whose prerequisite is
//! missing carries the reason instead of a number ([`Cell::NotRun`]), so the
//! table never shows an invented figure.

use crate::stats::{fmt_num, Summary};
use std::fmt::Write as _;

/// One measured figure, or why it was not measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Median, min and max over the repeats.
    Measured(Summary),
    /// Not measured, with the reason.
    NotRun(String),
}

impl Cell {
    /// A cell from samples; `NotRun` when there are none.
    pub fn from_samples(samples: &[f64]) -> Cell {
        match Summary::of(samples) {
            Some(s) => Cell::Measured(s),
            None => Cell::NotRun("no valid sample".into()),
        }
    }

    /// The median, if measured.
    pub fn median(&self) -> Option<f64> {
        match self {
            Cell::Measured(s) => Some(s.median),
            Cell::NotRun(_) => None,
        }
    }

    fn render(&self) -> String {
        match self {
            Cell::Measured(s) if s.n > 1 => format!(
                "{} ({}–{})",
                fmt_num(s.median),
                fmt_num(s.min),
                fmt_num(s.max)
            ),
            Cell::Measured(s) => fmt_num(s.median),
            Cell::NotRun(why) => format!("not run: {why}"),
        }
    }
}

/// What a target compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Against {
    /// rbd-row / native.
    Native,
    /// rbd-row / control.
    Control,
    /// rbd-row's own figure.
    Value,
}

/// A target from the issues, checked against the row's medians.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// As the issue states it.
    pub text: String,
    /// What is compared.
    pub against: Against,
    /// `true`: the figure must be at least `bound`; `false`: at most.
    pub at_least: bool,
    /// The bound.
    pub bound: f64,
}

impl Target {
    /// rbd-row / native ≥ `bound` (or ≤ with `at_least == false`).
    pub fn vs_native(text: &str, at_least: bool, bound: f64) -> Target {
        Target {
            text: text.into(),
            against: Against::Native,
            at_least,
            bound,
        }
    }

    /// rbd-row / control.
    pub fn vs_control(text: &str, at_least: bool, bound: f64) -> Target {
        Target {
            against: Against::Control,
            ..Target::vs_native(text, at_least, bound)
        }
    }

    /// rbd-row's own figure.
    pub fn value(text: &str, at_least: bool, bound: f64) -> Target {
        Target {
            against: Against::Value,
            ..Target::vs_native(text, at_least, bound)
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Section (issue 12's row number and name).
    pub group: String,
    /// What was measured.
    pub name: String,
    /// Unit of the figures.
    pub unit: String,
    /// rbd-row's figure.
    pub rbd_row: Cell,
    /// Native RBD's, if compared.
    pub native: Option<Cell>,
    /// The no-snapshot control's, if compared.
    pub control: Option<Cell>,
    /// The RADOS ceiling, if compared.
    pub ceiling: Option<Cell>,
    /// The target, if the issues set one.
    pub target: Option<Target>,
}

impl Row {
    /// A row with only rbd-row's figure.
    pub fn new(group: &str, name: &str, unit: &str, rbd_row: Cell) -> Row {
        Row {
            group: group.into(),
            name: name.into(),
            unit: unit.into(),
            rbd_row,
            native: None,
            control: None,
            ceiling: None,
            target: None,
        }
    }

    /// A row that was not run at all.
    pub fn not_run(group: &str, name: &str, unit: &str, why: &str) -> Row {
        Row::new(group, name, unit, Cell::NotRun(why.into()))
    }

    /// With native RBD's figure.
    pub fn native(mut self, c: Cell) -> Row {
        self.native = Some(c);
        self
    }

    /// With the control's figure.
    pub fn control(mut self, c: Cell) -> Row {
        self.control = Some(c);
        self
    }

    /// With the ceiling.
    pub fn ceiling(mut self, c: Cell) -> Row {
        self.ceiling = Some(c);
        self
    }

    /// With a target.
    pub fn target(mut self, t: Target) -> Row {
        self.target = Some(t);
        self
    }

    fn ratio(&self, other: &Option<Cell>) -> Option<f64> {
        let den = other.as_ref()?.median()?;
        (den != 0.0).then(|| self.rbd_row.median().map(|n| n / den))?
    }

    /// rbd-row / native.
    pub fn vs_native(&self) -> Option<f64> {
        self.ratio(&self.native)
    }

    /// rbd-row / control.
    pub fn vs_control(&self) -> Option<f64> {
        self.ratio(&self.control)
    }

    /// rbd-row / ceiling.
    pub fn vs_ceiling(&self) -> Option<f64> {
        self.ratio(&self.ceiling)
    }

    /// `Some(true)` met, `Some(false)` missed, `None` no target or no figure.
    pub fn met(&self) -> Option<bool> {
        let t = self.target.as_ref()?;
        let x = match t.against {
            Against::Native => self.vs_native()?,
            Against::Control => self.vs_control()?,
            Against::Value => self.rbd_row.median()?,
        };
        Some(if t.at_least {
            x >= t.bound
        } else {
            x <= t.bound
        })
    }

    /// Whether any of its figures is a command or step that ran past its
    /// deadline ([`crate::proc::TimedOut`]'s text).
    pub fn timed_out(&self) -> bool {
        [
            Some(&self.rbd_row),
            self.native.as_ref(),
            self.control.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|c| matches!(c, Cell::NotRun(why) if why.starts_with("timed out")))
    }

    fn markdown(&self) -> String {
        let opt = |c: &Option<Cell>| c.as_ref().map_or("–".to_owned(), Cell::render);
        let ratio = |r: Option<f64>| r.map_or("–".to_owned(), |r| format!("{r:.2}"));
        let verdict = match self.met() {
            Some(true) => "met",
            Some(false) => "**missed**",
            None if self.target.is_some() => "not judged",
            None => "–",
        };
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.name,
            self.unit,
            self.rbd_row.render(),
            opt(&self.native),
            opt(&self.control),
            opt(&self.ceiling),
            ratio(self.vs_native()),
            ratio(self.vs_control()),
            ratio(self.vs_ceiling()),
            self.target.as_ref().map_or("–", |t| t.text.as_str()),
            verdict
        )
    }
}

/// The whole report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `(label, value)` lines about the run: machine, Ceph, command, …
    pub about: Vec<(String, String)>,
    /// The rows, in order; consecutive rows of one group share a table.
    pub rows: Vec<Row>,
    /// Further markdown sections `(title, body)` (per-round tables, notes).
    pub sections: Vec<(String, String)>,
    /// Notes printed under a group's table `(group, markdown)`: why a target
    /// is missed, the profile of a missed row.
    pub notes: Vec<(String, String)>,
    /// Plots `(caption, path relative to RESULTS.md)`.
    pub plots: Vec<(String, String)>,
}

const HEAD: &str = "| measurement | unit | rbd-row median (min–max) | native | control (no snapshots) | RADOS ceiling | rbd-row / native | rbd-row / control | rbd-row / ceiling | target | |\n|---|---|---|---|---|---|---|---|---|---|---|\n";

impl Report {
    /// `bench/RESULTS.md`'s text.
    pub fn markdown(&self, title: &str) -> String {
        let mut s = format!("# {title}\n\n");
        for (k, v) in &self.about {
            let _ = writeln!(s, "- **{k}:** {v}");
        }
        let (met, missed) = self.rows.iter().fold((0, 0), |(m, x), r| match r.met() {
            Some(true) => (m + 1, x),
            Some(false) => (m, x + 1),
            None => (m, x),
        });
        let not_run = self
            .rows
            .iter()
            .filter(|r| matches!(r.rbd_row, Cell::NotRun(_)))
            .count();
        let timed_out = self.rows.iter().filter(|r| r.timed_out()).count();
        let _ = writeln!(
            s,
            "- **Summary:** {} rows, targets met {met}, missed {missed}, rows not run {not_run} (timed out {timed_out})\n",
            self.rows.len()
        );
        // One table per group, in the order the groups first appear (a
        // step may add rows to two groups alternately), its notes once.
        let mut groups: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !groups.contains(&r.group.as_str()) {
                groups.push(&r.group);
            }
        }
        for g in groups {
            let _ = write!(s, "\n## {g}\n\n{HEAD}");
            for r in self.rows.iter().filter(|r| r.group == g) {
                let _ = writeln!(s, "{}", r.markdown());
            }
            for (_, note) in self.notes.iter().filter(|(ng, _)| ng == g) {
                let _ = write!(s, "\n{}\n", note.trim_end());
            }
        }
        for (title, body) in &self.sections {
            let _ = write!(s, "\n## {title}\n\n{body}\n");
        }
        if !self.plots.is_empty() {
            s.push_str("\n## Plots\n\n");
            for (cap, path) in &self.plots {
                let _ = writeln!(s, "![{cap}]({path})\n");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(x: &[f64]) -> Cell {
        Cell::from_samples(x)
    }

    #[test]
    fn interleaved_groups_render_one_table_each_with_their_notes_once() {
        let row = |g: &str, n: &str| Row::new(g, n, "s", cell(&[1.0]));
        let rep = Report {
            rows: vec![
                row("5. diff", "a"),
                row("6a. rollback", "b"),
                row("5. diff", "c"),
            ],
            notes: vec![
                ("6a. rollback".into(), "NOTE-6".into()),
                ("5. diff".into(), "NOTE-5".into()),
            ],
            ..Report::default()
        };
        let md = rep.markdown("t");
        assert_eq!(md.matches("## 5. diff").count(), 1, "{md}");
        assert_eq!(md.matches("## 6a. rollback").count(), 1, "{md}");
        assert_eq!(md.matches("NOTE-5").count(), 1, "{md}");
        assert_eq!(md.matches("NOTE-6").count(), 1, "{md}");
        let (a, c, six) = (
            md.find("| a |").unwrap_or(0),
            md.find("| c |").unwrap_or(0),
            md.find("## 6a").unwrap_or(0),
        );
        assert!(a < c && c < six, "rows of 5 together, before 6a: {md}");
    }

    #[test]
    fn ratios_and_verdicts() {
        let r = Row::new("g", "writes", "IOPS", cell(&[90.0, 100.0, 110.0]))
            .native(cell(&[50.0]))
            .control(cell(&[200.0]))
            .target(Target::vs_native("≥ 2× native", true, 2.0));
        assert_eq!(r.vs_native(), Some(2.0));
        assert_eq!(r.vs_control(), Some(0.5));
        assert_eq!(r.vs_ceiling(), None);
        assert_eq!(r.met(), Some(true));
        let r = r.target(Target::vs_control("≥ 0.9× control", true, 0.9));
        assert_eq!(r.met(), Some(false));
        let r = r.target(Target::value("≤ 120", false, 120.0));
        assert_eq!(r.met(), Some(true));
    }

    #[test]
    fn not_run_rows_show_their_reason_and_no_number() {
        let r = Row::not_run("g", "C ABI writes", "IOPS", "librbd.so.1 not built")
            .native(cell(&[50.0]))
            .target(Target::vs_native("≥ 0.9× native", true, 0.9));
        assert_eq!(r.met(), None);
        let md = Report {
            rows: vec![r],
            ..Report::default()
        }
        .markdown("t");
        assert!(md.contains("not run: librbd.so.1 not built"), "{md}");
        assert!(md.contains("not judged"), "{md}");
        assert!(md.contains("rows not run 1 (timed out 0)"), "{md}");
    }

    #[test]
    fn timed_out_rows_are_counted_and_notes_follow_their_table() {
        let late = Row::not_run(
            "a",
            "x",
            "u",
            "timed out: `rbd snap create p/i@s` still running after 60 s, killed",
        );
        let ok =
            Row::new("b", "y", "u", cell(&[1.0])).native(Cell::NotRun("timed out: `fio` …".into()));
        assert!(late.timed_out() && ok.timed_out());
        assert!(!Row::not_run("a", "z", "u", "not built").timed_out());
        let md = Report {
            rows: vec![late, Row::new("a", "w", "u", cell(&[2.0])), ok],
            notes: vec![("a".into(), "NOTE-A".into())],
            ..Report::default()
        }
        .markdown("t");
        assert!(md.contains("(timed out 2)"), "{md}");
        let (note, w, b) = (md.find("NOTE-A"), md.find("| w |"), md.find("## b"));
        assert!(w < note && note < b, "{md}");
    }

    #[test]
    fn rows_of_one_group_share_a_table() {
        let row = |g: &str| Row::new(g, "x", "u", cell(&[1.0]));
        let md = Report {
            rows: vec![row("a"), row("a"), row("b")],
            ..Report::default()
        }
        .markdown("t");
        assert_eq!(md.matches("## a").count(), 1);
        assert_eq!(md.matches("## b").count(), 1);
        assert_eq!(md.matches("| measurement |").count(), 2);
    }
}

//! The recorded run of a single-purpose bench (`snap-ops`, `librbd-fio`,
//! `rolling-mem`, …): its table, written to `bench/results/<bench>.md`, so
//! that `bench/RESULTS.md` can hold a real run of every target the issues
//! set, not only the rows of the report binary. The report copies these
//! files into RESULTS.md's last section (see [`collect`]); each keeps its own
//! header (command, machine, Ceph version, date), because it was a separate
//! run.

use crate::results::Report;
use std::path::{Path, PathBuf};

/// Where records go: `RBD_ROW_BENCH_RECORD_DIR`, else this crate's
/// `results/` directory (so a bench run from anywhere in the workspace
/// updates the committed file).
pub fn dir() -> PathBuf {
    std::env::var_os("RBD_ROW_BENCH_RECORD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"))
}

/// A bench's name as a file stem: lowercase letters, digits and `-` only, so
/// a record can never be written outside [`dir`].
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The header lines every record starts with; the bench's own `about`
/// lines (its parameters) follow them.
fn standard_about(with_ceph: bool) -> Vec<(String, String)> {
    let args: Vec<String> = std::env::args().collect();
    let mut about = vec![
        ("Command".into(), format!("`{}`", args.join(" "))),
        ("Date".into(), utc_now()),
        ("Machine".into(), crate::sysinfo::machine()),
        ("Source tree".into(), crate::sysinfo::source_tree()),
    ];
    if with_ceph {
        let v = crate::ceph::version().unwrap_or_else(|e| format!("unknown ({e})"));
        about.push(("Ceph".into(), v));
    }
    about
}

/// `YYYY-MM-DD HH:MM UTC` from the system clock.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Writes `report` as `<dir>/<bench>.md` under the title `title`, after the
/// standard header (command line, date, machine, and the Ceph version when
/// `on_ceph`). Returns the path written.
pub fn write(bench: &str, title: &str, on_ceph: bool, report: &Report) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(valid_name(bench), "bench name {bench:?}: use [a-z0-9-]");
    let mut r = report.clone();
    let mut about = standard_about(on_ceph);
    about.append(&mut r.about);
    r.about = about;
    let d = dir();
    std::fs::create_dir_all(&d)?;
    let path = d.join(format!("{bench}.md"));
    std::fs::write(&path, r.markdown(title))?;
    Ok(path)
}

/// Every record in `dir`, sorted by name, as `(bench, markdown)`, for the
/// report's section of single-purpose benches.
pub fn collect(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if p.extension().is_some_and(|x| x == "md") && valid_name(stem) {
            out.push((stem.to_owned(), std::fs::read_to_string(&p)?));
        }
    }
    out.sort();
    Ok(out)
}

/// `markdown` with every heading one level deeper (`#` → `###` for
/// `levels == 2`), so a record nests under a section of RESULTS.md.
pub fn demote_headings(markdown: &str, levels: usize) -> String {
    let extra = "#".repeat(levels);
    markdown
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("{extra}{l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Cell, Row, Target};

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_787), (2026, 11, 30));
    }

    #[test]
    fn names_stay_inside_the_directory() {
        assert!(valid_name("snap-ops"));
        for bad in ["", "../x", "a/b", "A", "x.md"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn written_records_are_collected_and_demoted() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::env::set_var("RBD_ROW_BENCH_RECORD_DIR", tmp.path());
        let mut rep = Report::default();
        rep.about.push(("Snapshots".into(), "10000".into()));
        rep.rows.push(
            Row::new(
                "open",
                "open time",
                "s",
                Cell::from_samples(&[0.5, 0.6, 0.7]),
            )
            .target(Target::value("≤ 1 s", false, 1.0)),
        );
        let p = write("snap-ops", "snap-ops at 10,000 snapshots", false, &rep).expect("write");
        assert_eq!(p, tmp.path().join("snap-ops.md"));
        assert!(write("../evil", "t", false, &rep).is_err());
        std::fs::write(tmp.path().join("notes.txt"), "ignored").expect("w");
        let got = collect(tmp.path()).expect("collect");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "snap-ops");
        let text = &got[0].1;
        assert!(
            text.starts_with("# snap-ops at 10,000 snapshots\n"),
            "{text}"
        );
        assert!(text.contains("- **Command:** `"), "{text}");
        assert!(text.contains("- **Snapshots:** 10000"), "{text}");
        assert!(text.contains("| met |"), "{text}");
        let nested = demote_headings(text, 2);
        assert!(nested.starts_with("### snap-ops"), "{nested}");
        assert!(nested.contains("\n#### open\n"), "{nested}");
    }
}

//! Output helpers: rbd-style tables, timestamps, JSON, progress.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Column alignment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// An rbd `TextTable`: columns separated by two spaces.
pub(crate) fn table(headers: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|(h, _)| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let width = w.get(i).copied().unwrap_or(0);
            let align = headers.get(i).map(|h| h.1).unwrap_or(Align::Left);
            let pad = width.saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if align == Align::Right {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|(h, _)| *h).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `ctime`-style UTC timestamp, as rbd prints them: `Fri Nov 27 15:21:59 2026`.
pub(crate) fn ctime(secs: u64) -> String {
    const WD: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        WD[((days + 4) % 7) as usize],
        MON[(m as usize).saturating_sub(1) % 12],
        d,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        y
    )
}

/// Serializes JSON, compact or pretty, with a trailing newline.
pub(crate) fn json(v: &serde_json::Value, pretty: bool) -> String {
    let mut s = if pretty {
        // rbd's --pretty-format indents by four spaces.
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        match serde::Serialize::serialize(v, &mut ser) {
            Ok(()) => String::from_utf8(buf).unwrap_or_else(|_| "null".into()),
            Err(_) => "null".into(),
        }
    } else {
        serde_json::to_string(v).unwrap_or_else(|_| "null".into())
    };
    s.push('\n');
    s
}

/// rbd-style progress on stderr ("Exporting image: 42% complete..."),
/// shown only when enabled and stderr is a terminal.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
}

impl Progress {
    pub(crate) fn new(label: &'static str, total: u64, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(total.max(1)), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{msg}: {percent}% complete...") {
                b.set_style(style);
            }
            b.set_message(label);
            b
        });
        Progress { bar, label }
    }

    pub(crate) fn set(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    pub(crate) fn finish(&self, ok: bool) {
        if let Some(b) = &self.bar {
            let pct = if ok {
                100
            } else {
                b.length()
                    .filter(|l| *l > 0)
                    .map(|l| b.position() * 100 / l)
                    .unwrap_or(0)
            };
            b.finish_and_clear();
            eprintln!(
                "{}: {pct}% complete...{}",
                self.label,
                if ok { "done." } else { "failed." }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(ctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(ctime(1_795_792_919), "Fri Nov 27 15:21:59 2026");
    }
}

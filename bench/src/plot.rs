//! PNG line charts of the report with `plotters`' bitmap backend. Text is
//! drawn with a TrueType font read at run time (DejaVu Sans from Debian's
//! fonts-dejavu-core, or `$RBD_ROW_BENCH_FONT`), so the build needs neither
//! fontconfig nor a bundled font.

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers the font once; the error says which file is missing.
fn font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let env = std::env::var("RBD_ROW_BENCH_FONT").ok();
        let path = env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied())
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                format!(
                    "no TrueType font for the plots: install fonts-dejavu-core or set RBD_ROW_BENCH_FONT (looked in {})",
                    FONT_PATHS.join(", ")
                )
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TrueType font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend.
    pub name: String,
    /// Points (x, y), in x order.
    pub points: Vec<(f64, f64)>,
}

/// A chart's axes and title.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// Title.
    pub title: &'a str,
    /// X axis label.
    pub x: &'a str,
    /// Y axis label.
    pub y: &'a str,
    /// Logarithmic x axis (snapshot counts, image sizes).
    pub log_x: bool,
    /// Logarithmic y axis (times spanning decades).
    pub log_y: bool,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];

fn range(vals: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    if log {
        (lo.max(1e-9) / 1.5, hi.max(1e-9) * 1.5)
    } else {
        (lo.min(0.0), if hi > 0.0 { hi * 1.1 } else { 1.0 })
    }
}

/// Draws `series` into a 900×560 PNG at `path`.
pub fn line_chart(path: &Path, c: &Chart<'_>, series: &[Series]) -> anyhow::Result<()> {
    font()?;
    let pts = || series.iter().flat_map(|s| s.points.iter());
    // log axes cannot show 0: plot x = 0 at the first decade boundary below.
    let shift = |x: f64| if c.log_x { x.max(0.5) } else { x };
    let (x0, x1) = range(pts().map(|p| shift(p.0)), c.log_x);
    let (y0, y1) = range(pts().map(|p| p.1), c.log_y);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut b = ChartBuilder::on(&root);
    b.caption(c.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut ch = $chart;
            ch.configure_mesh()
                .x_desc(c.x)
                .y_desc(c.y)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            for (i, s) in series.iter().enumerate() {
                let col = COLORS[i % COLORS.len()];
                let p: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (shift(x), y)).collect();
                ch.draw_series(LineSeries::new(p.clone(), col.stroke_width(2)))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2))
                    });
                ch.draw_series(p.into_iter().map(|q| Circle::new(q, 3, col.filled())))
                    .map_err(|e| anyhow!("{e}"))?;
            }
            ch.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerLeft)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }};
    }
    match (c.log_x, c.log_y) {
        (false, false) => draw!(b
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| anyhow!("{e}"))?),
        (true, false) => draw!(b
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(|e| anyhow!("{e}"))?),
        (false, true) => draw!(b
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(|e| anyhow!("{e}"))?),
        (true, true) => draw!(b
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(|e| anyhow!("{e}"))?),
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        // run-all.sh installs fonts-dejavu-core; without it this names it.
        font().expect("font");
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("t.png");
        let s = vec![Series {
            name: "a".into(),
            points: vec![(0.0, 1.0), (4.0, 3.0), (64.0, 2.0)],
        }];
        for (lx, ly) in [(false, false), (true, false), (false, true), (true, true)] {
            let c = Chart {
                title: "t",
                x: "x",
                y: "y",
                log_x: lx,
                log_y: ly,
            };
            line_chart(&p, &c, &s).expect("chart");
            let bytes = std::fs::read(&p).expect("png");
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        }
    }
}

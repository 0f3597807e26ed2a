//! Line and scatter charts: SVG written by hand, PNG rendered with plotters (text in the
//! bundled DejaVu Sans, so no system fonts or native libraries are needed).

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{LabError, Result};

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Connected line with point markers.
    Line,
    /// Markers only.
    Points,
}

/// A named series of `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
    /// Drawing style.
    pub style: Style,
}

/// One chart panel.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Title above the panel.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// The series.
    pub series: Vec<Series>,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const W: f64 = 420.0;
const H: f64 = 320.0;
const ML: f64 = 60.0;
const MR: f64 = 15.0;
const MT: f64 = 35.0;
const MB: f64 = 50.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let start = (lo / step).ceil() * step;
    (0..)
        .map(|i| start + i as f64 * step)
        .take_while(|x| *x <= hi + step * 1e-9)
        .collect()
}

fn fmt_tick(x: f64) -> String {
    let r = (x * 1000.0).round() / 1000.0;
    if r == r.trunc() {
        format!("{r:.0}")
    } else {
        format!("{r}")
    }
}

impl Chart {
    /// Data bounds `(x0, x1, y0, y1)`: every finite point, y padded by 8%.
    fn bounds(&self) -> (f64, f64, f64, f64) {
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let (mut x0, mut x1, mut y0, mut y1) = pts.iter().fold(
            (
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ),
            |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
        );
        if pts.is_empty() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        let pad = ((y1 - y0) * 0.08).max(1e-3);
        y0 -= pad;
        y1 += pad;
        (x0, x1, y0, y1)
    }

    fn render(&self, out: &mut String) {
        let (x0, x1, y0, y1) = self.bounds();
        let (pw, ph) = (W - ML - MR, H - MT - MB);
        let sx = |x: f64| ML + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| MT + ph - (y - y0) / (y1 - y0) * ph;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
            ML + pw / 2.0,
            esc(&self.title)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##,
            ML
        );
        for t in nice_ticks(x0, x1) {
            let x = sx(t);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{MT}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"##,
                MT + ph,
                MT + ph + 15.0,
                fmt_tick(t)
            );
        }
        for t in nice_ticks(y0, y1) {
            let y = sy(t);
            let _ = writeln!(
                out,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
                ML,
                ML + pw,
                ML - 5.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12">{}</text>"#,
            ML + pw / 2.0,
            H - 12.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12" transform="rotate(-90 {:.1} {:.1})">{}</text>"#,
            16.0,
            MT + ph / 2.0,
            16.0,
            MT + ph / 2.0,
            esc(&self.y_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let p: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            if s.style == Style::Line && p.len() > 1 {
                let d: Vec<String> = p
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                    .collect();
                let _ = writeln!(
                    out,
                    r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
                    d.join(" ")
                );
            }
            for &(x, y) in &p {
                if s.style == Style::Line {
                    let _ = writeln!(
                        out,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                        sx(x),
                        sy(y)
                    );
                } else {
                    let _ = writeln!(
                        out,
                        r#"<rect x="{:.1}" y="{:.1}" width="9" height="9" fill="none" stroke="{c}" stroke-width="2"/>"#,
                        sx(x) - 4.5,
                        sy(y) - 4.5
                    );
                }
            }
            let ly = MT + 14.0 + 16.0 * i as f64;
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{c}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                ML + 8.0,
                ly - 9.0,
                ML + 22.0,
                ly,
                esc(&s.label)
            );
        }
    }
}

/// Panels per row of a figure.
pub const COLUMNS: usize = 3;

/// Renders charts as one SVG document, [`COLUMNS`] panels per row.
pub fn svg(charts: &[Chart]) -> String {
    let cols = charts.len().clamp(1, COLUMNS);
    let rows = charts.len().div_ceil(COLUMNS).max(1);
    let (width, height) = (W * cols as f64, H * rows as f64);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    for (i, c) in charts.iter().enumerate() {
        let (x, y) = (W * (i % COLUMNS) as f64, H * (i / COLUMNS) as f64);
        let _ = writeln!(out, r#"<g transform="translate({x},{y})">"#);
        c.render(&mut out);
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}

/// An output format of [`write()`], chosen by the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.svg`: hand-written vector graphics.
    Svg,
    /// `.png`: rendered with plotters, text in the bundled DejaVu Sans.
    Png,
}

/// The format `path` asks for; an error naming the path for any other extension.
pub fn check_path(path: &Path) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        _ => Err(LabError::spec(
            "plot file",
            &path.display().to_string(),
            "the name must end in .svg or .png",
        )),
    }
}

/// Writes charts to `path` (`.svg` or `.png`) through a temporary file beside it that is
/// renamed into place, so a failure never leaves a half-written figure; an existing file is
/// replaced only with `force`.
pub fn write(path: &Path, charts: &[Chart], force: bool) -> Result<()> {
    let format = check_path(path)?;
    // The temporary keeps the extension: the PNG encoder picks the format from it.
    let tmp = dera_io::Temp::file_beside(path)?;
    match format {
        Format::Svg => {
            std::fs::write(tmp.path(), svg(charts)).map_err(|e| LabError::io(tmp.path(), e))?
        }
        Format::Png => png(tmp.path(), charts)?,
    }
    Ok(tmp.commit(path, force)?)
}

/// The font PNG text is drawn in (DejaVu Sans, embedded by `dera-assets`; license in
/// `assets/fonts`).
const FONT: &[u8] = dera_assets::FONT;

fn png(path: &Path, charts: &[Chart]) -> Result<()> {
    use plotters::prelude::*;
    use plotters::style::{FontStyle, register_font};

    let fail = |e: &dyn std::fmt::Display| LabError::Other(format!("{}: {e}", path.display()));
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // The bundled font is valid; a failure would surface as a drawing error below.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let cols = charts.len().clamp(1, COLUMNS);
    let rows = charts.len().div_ceil(COLUMNS).max(1);
    let size = ((W as u32) * cols as u32, (H as u32) * rows as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let panels = root.split_evenly((rows, cols));
    for (area, chart) in panels.iter().zip(charts) {
        let (x0, x1, y0, y1) = chart.bounds();
        let mut c = ChartBuilder::on(area)
            .caption(&chart.title, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| fail(&e))?;
        c.configure_mesh()
            .x_desc(chart.x_label.as_str())
            .y_desc(chart.y_label.as_str())
            .label_style(("sans-serif", 11))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| fail(&e))?;
        for (i, s) in chart.series.iter().enumerate() {
            let color = hex_color(COLORS[i % COLORS.len()]);
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            if s.style == Style::Line {
                c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|e| fail(&e))?;
            }
            c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| fail(&e))?
                .label(s.label.as_str())
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, color.filled()));
        }
        if chart.series.iter().any(|s| !s.label.is_empty()) {
            c.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .label_font(("sans-serif", 11))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| fail(&e))?;
        }
    }
    root.present().map_err(|e| fail(&e))
}

fn hex_color(hex: &str) -> plotters::style::RGBColor {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap_or(0);
    plotters::style::RGBColor((v >> 16) as u8, (v >> 8) as u8, v as u8)
}

/// Reward-vs-lambda and KL-vs-lambda panels of a sweep. With several aligned models, `x` is
/// the first lambda and each value of the others is its own series.
pub fn sweep_charts(summaries: &[crate::sweep::LambdaSummary]) -> Vec<Chart> {
    let mut groups: Vec<(String, Vec<&crate::sweep::LambdaSummary>)> = Vec::new();
    for s in summaries {
        let rest = if s.lambdas.len() > 1 {
            format!(
                " (others = {})",
                s.lambdas[1..]
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        } else {
            String::new()
        };
        match groups.iter_mut().find(|(k, _)| *k == rest) {
            Some((_, g)) => g.push(s),
            None => groups.push((rest, vec![s])),
        }
    }
    let names: Vec<String> = summaries
        .first()
        .map(|s| s.mean_reward.keys().cloned().collect())
        .unwrap_or_default();
    let x = |s: &crate::sweep::LambdaSummary| s.lambdas.first().copied().unwrap_or(0.0);
    let mut reward = Vec::new();
    let mut kl = Vec::new();
    for (rest, g) in &groups {
        for n in &names {
            reward.push(Series {
                label: format!("{n}{rest}"),
                points: g
                    .iter()
                    .map(|s| (x(s), s.mean_reward.get(n).copied().unwrap_or(f64::NAN)))
                    .collect(),
                style: Style::Line,
            });
        }
        kl.push(Series {
            label: format!("KL{rest}"),
            points: g.iter().map(|s| (x(s), s.mean_kl)).collect(),
            style: Style::Line,
        });
    }
    vec![
        Chart {
            title: "mean reward vs lambda".into(),
            x_label: "lambda".into(),
            y_label: "mean reward".into(),
            series: reward,
        },
        Chart {
            title: "KL(mixture || reference) vs lambda".into(),
            x_label: "lambda".into(),
            y_label: "sequence KL (nats)".into(),
            series: kl,
        },
    ]
}

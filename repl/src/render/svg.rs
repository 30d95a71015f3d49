//! image/svg+xml: a line chart (axes, "nice" ticks with labels, light grid, legend, one polyline per series with
//! points, each with its own colour and dash pattern), 600x300, standalone (xmlns) so it works both as its own
//! MIME type and embedded in HTML.
//!
//! Degenerate data must still draw: no series, no finite point, a single point, a flat line. Non-finite points
//! are skipped, and every axis domain is widened to a non-zero span before any division.

use super::{fmt_float, html::escape, one_line};
use crate::value::Chart;
use std::fmt::Write;

const W: f64 = 600.0;
const H: f64 = 300.0;
// Plot area; the right margin holds the legend.
const X0: f64 = 62.0;
const X1: f64 = 430.0;
const Y0: f64 = 32.0;
const Y1: f64 = 252.0;
/// Tableau 10: distinct, and readable on the white background the chart draws itself.
const PALETTE: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
/// Series with at most this many points also get dot markers (a single point has no line to show).
const MARKER_MAX: usize = 40;

/// An axis: domain [lo, hi] (hi > lo always) and the tick step.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    /// A domain covering `vals` (finite ones only) rounded out to nice tick steps (1, 2 or 5 times 10^k).
    /// Integer-only data (steps, positions) gets a step of at least 1, so ticks never read "2.5 steps".
    fn new(vals: impl Iterator<Item = f64> + Clone) -> Axis {
        let integral = vals.clone().all(|v| v.fract() == 0.0);
        let (mut lo, mut hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if lo > hi {
            (lo, hi) = (0.0, 1.0); // no data
        }
        if hi - lo <= f64::EPSILON * lo.abs().max(hi.abs()).max(1e-300) {
            // One value (or a flat line): centre it in a span proportional to its size.
            let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = ((lo - d).max(-f64::MAX), (hi + d).min(f64::MAX));
        }
        // Halving first keeps the span finite even for values near f64::MAX.
        let raw = (hi / 2.0 - lo / 2.0) / 2.5;
        let mag = 10f64.powf(raw.log10().floor());
        let f = raw / mag;
        let step = mag
            * if f <= 1.0 {
                1.0
            } else if f <= 2.0 {
                2.0
            } else if f <= 5.0 {
                5.0
            } else {
                10.0
            };
        let step = if integral { step.max(1.0) } else { step };
        let (nlo, nhi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
        if step.is_finite() && step > 0.0 && nlo.is_finite() && nhi.is_finite() && nhi > nlo {
            Axis { lo: nlo, hi: nhi, step }
        } else {
            Axis { lo, hi, step: hi / 5.0 - lo / 5.0 }
        }
    }

    /// Maps a value onto [a, b] (screen coordinates; b < a for the y axis).
    fn map(&self, v: f64, a: f64, b: f64) -> f64 {
        // Halved so that hi - lo cannot overflow to infinity.
        a + (v / 2.0 - self.lo / 2.0) / (self.hi / 2.0 - self.lo / 2.0) * (b - a)
    }

    fn ticks(&self) -> Vec<f64> {
        // Counted rather than compared against hi + epsilon, and summed in halves, so that domains near
        // f64::MAX neither loop to the cap on infinities nor overflow.
        let n = (self.hi / self.step - self.lo / self.step + 1e-6).floor().clamp(0.0, 50.0) as usize;
        (0..=n)
            .map(|k| 2.0 * (self.lo / 2.0 + k as f64 * (self.step / 2.0)))
            .filter(|v| v.is_finite())
            .map(|v| if v.abs() < self.step * 1e-9 { 0.0 } else { v }) // no "-0"
            .collect()
    }

    /// Tick label with as many decimals as the step needs, so neighbouring ticks never read alike (0.99990,
    /// 0.99992, ...); extreme magnitudes fall back to exponent form.
    fn label(&self, v: f64) -> String {
        let big = self.lo.abs().max(self.hi.abs());
        if self.step >= 1e-9 && big < 1e6 {
            let decimals = (-self.step.log10().floor()).clamp(0.0, 10.0) as usize;
            format!("{v:.decimals$}")
        } else {
            fmt_float(v)
        }
    }
}

/// Characters of a legend line that fit the right margin (18 of DejaVu Sans at 11 px are about 125 px wide;
/// the legend has 600 - 430 - 38 = 132).
const LEGEND_CHARS: usize = 18;
/// Dash patterns by series (the first solid), so a series drawn over an equal one leaves it visible.
const DASHES: [&str; 4] = ["", "6 3", "2 3", "9 3 2 3"];

/// A legend name in at most two lines that fit the right margin: broken at a space, the second line cut with
/// `…` only if the name is longer than both.
fn legend_lines(s: &str) -> Vec<String> {
    let s = one_line(s);
    let cut = |t: &str| -> String {
        if t.chars().count() <= LEGEND_CHARS {
            t.to_string()
        } else {
            t.chars().take(LEGEND_CHARS - 1).chain(['…']).collect()
        }
    };
    if s.chars().count() <= LEGEND_CHARS {
        return vec![s];
    }
    let head: String = s.chars().take(LEGEND_CHARS + 1).collect();
    match head.rfind(' ') {
        Some(at) if at > 0 => vec![s[..at].to_string(), cut(s[at + 1..].trim_start())],
        _ => vec![cut(&s)],
    }
}

pub(super) fn chart(c: &Chart) -> String {
    let finite: Vec<Vec<(f64, f64)>> = c
        .series
        .iter()
        .map(|s| s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect())
        .collect();
    let xa = Axis::new(finite.iter().flatten().map(|p| p.0));
    let ya = Axis::new(finite.iter().flatten().map(|p| p.1));
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = write!(s, "<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#ffffff\"/>");
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\" fill=\"#222\">{}</text>",
        (X0 + X1) / 2.0,
        escape(&one_line(&c.title))
    );
    // Grid and y ticks.
    for v in ya.ticks() {
        let y = ya.map(v, Y1, Y0);
        let _ = write!(s, "<line x1=\"{X0}\" y1=\"{y:.1}\" x2=\"{X1}\" y2=\"{y:.1}\" stroke=\"#e6e6e6\"/>");
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">{}</text>",
            X0 - 6.0,
            y + 4.0,
            escape(&ya.label(v))
        );
    }
    for v in xa.ticks() {
        let x = xa.map(v, X0, X1);
        let _ = write!(s, "<line x1=\"{x:.1}\" y1=\"{Y1}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#444\"/>", Y1 + 4.0);
        let _ = write!(
            s,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
            Y1 + 16.0,
            escape(&xa.label(v))
        );
    }
    // Axes on top of the grid.
    let _ = write!(s, "<path d=\"M{X0},{Y0} V{Y1} H{X1}\" fill=\"none\" stroke=\"#444\"/>");
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#222\">{}</text>",
        (X0 + X1) / 2.0,
        H - 8.0,
        escape(&one_line(&c.x_label))
    );
    let ymid = (Y0 + Y1) / 2.0;
    let _ = write!(
        s,
        "<text x=\"14\" y=\"{ymid}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {ymid})\" fill=\"#222\">{}</text>",
        escape(&one_line(&c.y_label))
    );
    if finite.iter().all(Vec::is_empty) {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{ymid}\" text-anchor=\"middle\" fill=\"#999\">no data</text>",
            (X0 + X1) / 2.0
        );
    }
    // One polyline per series with points (a series without any has neither a line nor a legend entry). Each
    // series keeps its colour and dash pattern by index, so the legend matches whatever is left out.
    let style = |i: usize| (PALETTE[i % PALETTE.len()], DASHES[i % DASHES.len()]);
    let dash_attr = |d: &str| if d.is_empty() { String::new() } else { format!(" stroke-dasharray=\"{d}\"") };
    for (i, pts) in finite.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
        let (col, dash) = style(i);
        let coords: Vec<(f64, f64)> = pts.iter().map(|(x, y)| (xa.map(*x, X0, X1), ya.map(*y, Y1, Y0))).collect();
        let list: Vec<String> = coords.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{col}\" stroke-width=\"1.8\" stroke-linejoin=\"round\"{} points=\"{}\"/>",
            dash_attr(dash),
            list.join(" ")
        );
        if coords.len() <= MARKER_MAX {
            for (x, y) in &coords {
                let _ = write!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"{col}\"/>");
            }
        }
    }
    // Legend: the series with points, one or two lines each, as many as fit the right margin, then "+k more".
    let shown: Vec<usize> = (0..c.series.len()).filter(|&i| !finite[i].is_empty()).collect();
    let (lx, mut y, mut drawn) = (X1 + 14.0, Y0 + 8.0, 0);
    for &i in &shown {
        let lines = legend_lines(&c.series[i].name);
        if y + 14.0 * (lines.len() - 1) as f64 > Y1 - 16.0 && drawn + 1 < shown.len() {
            break;
        }
        let (col, dash) = style(i);
        let _ = write!(
            s,
            "<line x1=\"{lx}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{col}\" stroke-width=\"2.5\"{}/>",
            lx + 18.0,
            dash_attr(dash)
        );
        for (k, line) in lines.iter().enumerate() {
            let _ = write!(s, "<text x=\"{}\" y=\"{}\" fill=\"#222\">{}</text>", lx + 24.0, y + 4.0 + 13.0 * k as f64, escape(line));
        }
        y += 13.0 * lines.len() as f64 + 6.0;
        drawn += 1;
    }
    if shown.len() > drawn {
        let _ = write!(s, "<text x=\"{lx}\" y=\"{Y1}\" fill=\"#666\">+{} more</text>", shown.len() - drawn);
    }
    s.push_str("</svg>");
    s
}

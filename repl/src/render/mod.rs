//! The ONE place where command results (`Value`s) become a MIME bundle. The terminal prints `ansi`, the Jupyter
//! kernel sends `plain`/`html`/`json`/`svg` as `text/plain`, `text/html`, `application/json` and
//! `image/svg+xml`, so both front-ends show the same things.
//!
//! Split: `text` (plain and ANSI share one code path, so they never drift apart), `html` (inline-styled
//! fragments, no external CSS/JS), `svg` (the line chart, embedded in the HTML too). Helpers used by more than
//! one of them (number formatting, visible whitespace, display width) live here.

mod html;
mod png;
mod svg;
mod text;

pub use png::{png, png_base64};

use crate::value::{Cell, Table, Value};

/// One value (or several) in every form a front-end may want.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// text/plain: no escape codes.
    pub plain: String,
    /// The same text with ANSI colours, for the terminal.
    pub ansi: String,
    /// text/html: a self-contained fragment with inline styles.
    pub html: String,
    /// application/json: the value as serialised.
    pub json: serde_json::Value,
    /// image/svg+xml: only for charts.
    pub svg: Option<String>,
}

/// Renders one value.
pub fn render(v: &Value) -> Bundle {
    let svg = match v {
        Value::Chart(c) => Some(svg::chart(c)),
        _ => None,
    };
    Bundle {
        plain: text::render(v, false),
        ansi: text::render(v, true),
        html: html::render(v, svg.as_deref()),
        // The values only hold strings, numbers and maps, so serialising cannot fail; Null is a safe fallback.
        json: serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
        svg,
    }
}

/// Several values as one bundle: texts joined by newlines, HTML concatenated, JSON an array, svg the first
/// chart's.
pub fn render_all(vs: &[Value]) -> Bundle {
    let parts: Vec<Bundle> = vs.iter().map(render).collect();
    Bundle {
        plain: parts.iter().map(|b| b.plain.as_str()).collect::<Vec<_>>().join("\n"),
        ansi: parts.iter().map(|b| b.ansi.as_str()).collect::<Vec<_>>().join("\n"),
        html: parts.iter().map(|b| b.html.as_str()).collect(),
        json: serde_json::Value::Array(parts.iter().map(|b| b.json.clone()).collect()),
        svg: parts.iter().find_map(|b| b.svg.clone()),
    }
}

/// MIME type of a value's JSON in a notebook output (`application/json` would outrank its HTML).
pub const VALUE_MIME: &str = "application/vnd.dllm.value+json";

/// One notebook output: MIME type and data (strings, and the values' JSON under [`VALUE_MIME`]).
pub type Output = Vec<(&'static str, serde_json::Value)>;

/// A command's values as the outputs a notebook shows, for every notebook front-end (the dllm kernel, the Rust
/// API under evcxr): each run of values other than charts as one output ([`output`]), and every chart as an
/// output of its own: its SVG and the same chart as PNG, with text/plain and the JSON, and no HTML. An untrusted
/// notebook (opened from a file rather than run here) strips SVG from HTML and does not render
/// `image/svg+xml`, but shows a PNG; a trusted one prefers the SVG (checked in a real JupyterLab by
/// tests/kernel/browser_check.py).
pub fn outputs(values: &[Value]) -> Vec<Output> {
    let mut out = Vec::new();
    let mut run: Vec<Value> = Vec::new();
    for v in values {
        if let Value::Chart(_) = v {
            if !run.is_empty() {
                out.push(output(&std::mem::take(&mut run)));
            }
            let b = render(v);
            let mut o: Output = vec![("text/plain", b.plain.into()), (VALUE_MIME, b.json)];
            if let Some(svg) = b.svg {
                if let Some(png) = png_base64(&svg) {
                    o.push(("image/png", png.into()));
                }
                o.push(("image/svg+xml", svg.into()));
            }
            out.push(o);
        } else {
            run.push(v.clone());
        }
    }
    if !run.is_empty() {
        out.push(output(&run));
    }
    out
}

/// Values as one output: text/plain, text/html, the JSON, and a chart's SVG if there is one.
pub fn output(values: &[Value]) -> Output {
    let b = if values.len() == 1 { render(&values[0]) } else { render_all(values) };
    let mut o: Output = vec![("text/plain", b.plain.into()), ("text/html", b.html.into()), (VALUE_MIME, b.json)];
    if let Some(svg) = b.svg {
        o.push(("image/svg+xml", svg.into()));
    }
    o
}

/// A data value that is a flat object (every field a number, string, bool or null) as a two-column table, so
/// text and HTML show it like every other table; `None` for nested data (shown as JSON).
pub(crate) fn data_table(title: &str, data: &serde_json::Value) -> Option<Table> {
    let obj = data.as_object()?;
    let mut rows = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let cell = match v {
            serde_json::Value::Number(n) => n.as_i64().map(Cell::Int).or_else(|| n.as_f64().map(Cell::Float))?,
            serde_json::Value::String(s) => Cell::Text(s.clone()),
            serde_json::Value::Bool(b) => Cell::Bool(*b),
            serde_json::Value::Null => Cell::Empty,
            _ => return None,
        };
        rows.push(vec![Cell::Text(k.clone()), cell]);
    }
    Some(Table { title: title.to_string(), columns: vec!["name".into(), "value".into()], rows })
}

/// A float with 4 significant digits: 0.01235, 1.235, 1235, 123457 (large numbers keep their integer part);
/// very small or huge magnitudes in exponent form so the column stays narrow.
pub(crate) fn fmt_float(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    if x == 0.0 {
        return "0".into();
    }
    let mag = x.abs().log10().floor() as i32;
    if !(-4..15).contains(&mag) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - mag).max(0) as usize;
    format!("{x:.decimals$}")
}

/// A table cell as text (text cells keep their spaces but show control characters).
pub(crate) fn fmt_cell(c: &Cell) -> String {
    match c {
        Cell::Text(s) => one_line(s),
        Cell::Int(i) => i.to_string(),
        Cell::Float(f) => fmt_float(*f),
        Cell::Bool(b) => b.to_string(),
        Cell::Empty => String::new(),
    }
}

/// Whether a cell is right-aligned (numbers) or left-aligned (text).
pub(crate) fn is_numeric(c: &Cell) -> bool {
    matches!(c, Cell::Int(_) | Cell::Float(_))
}

/// Free text on one line: newlines and tabs as visible symbols, other control characters (ESC above all, which
/// would otherwise reach the terminal) as `\xNN`.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\n' => out.push('⏎'),
            '\r' => out.push('␍'),
            '\t' => out.push('⇥'),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A token's text with its whitespace visible too: tokens often are " the" or "\n\n", and the difference matters
/// when looking at what a step decoded. Spaces become `·`; an empty text `∅`.
pub(crate) fn token_text(s: &str) -> String {
    if s.is_empty() {
        return "∅".into();
    }
    one_line(s).replace(' ', "·")
}

/// Terminal columns a string takes, approximately: CJK and emoji count 2, combining marks 0. Good enough to keep
/// tables aligned for LLaDA's English/Chinese output without pulling in a width crate.
pub(crate) fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            let u = c as u32;
            if (0x0300..=0x036F).contains(&u) || (0x200B..=0x200F).contains(&u) {
                0
            } else if (0x1100..=0x115F).contains(&u)
                || (0x2E80..=0xA4CF).contains(&u)
                || (0xAC00..=0xD7A3).contains(&u)
                || (0xF900..=0xFAFF).contains(&u)
                || (0xFE30..=0xFE4F).contains(&u)
                || (0xFF00..=0xFF60).contains(&u)
                || (0xFFE0..=0xFFE6).contains(&u)
                || (0x1F300..=0x1F64F).contains(&u)
                || (0x1F900..=0x1F9FF).contains(&u)
                || (0x20000..=0x3FFFD).contains(&u)
            {
                2
            } else {
                1
            }
        })
        .sum()
}

#[cfg(test)]
mod tests;

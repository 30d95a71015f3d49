//! text/html: self-contained fragments with inline styles only (notebooks strip or sandbox external CSS/JS).
//! Colours are set together with an explicit text colour so the fragments stay readable on dark themes too.
//!
//! Everything that came from the model or the user goes through `escape`: token texts like `<|mask|>` and
//! `<role>HUMAN</role>` are everywhere and must show as text, never become markup.

use super::text::{has_lev_marks, is_low, lev_summary};
use super::{fmt_cell, fmt_float, is_numeric, one_line, token_text};
use crate::value::{Canvas, CanvasCell, CellKind, Removed, RemovedWhy, Table, Value};
use std::fmt::Write;

const FONT: &str = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px";

/// Escapes text for HTML/XML element content and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes an attribute value keeping line breaks (hover text spans several lines).
fn escape_attr(s: &str) -> String {
    escape(s).replace('\n', "&#10;")
}

/// `svg` is the chart's SVG when `v` is a chart (rendered once by the caller, shared with the svg field).
pub(super) fn render(v: &Value, svg: Option<&str>) -> String {
    match v {
        Value::Message { text } => format!("<div style=\"{FONT};white-space:pre-wrap\">{}</div>", escape(text)),
        Value::Table(t) => table(t),
        Value::Steps(s) => table(&s.table),
        Value::Canvas(c) => canvas(c),
        Value::Chart(c) => match svg {
            Some(s) => format!("<div>{s}</div>"),
            None => format!("<div>{}</div>", escape(&c.title)),
        },
        Value::Data { title, data } => match super::data_table(title, data) {
            Some(t) => table(&t),
            None => {
                let json = serde_json::to_string_pretty(data).unwrap_or_else(|_| data.to_string());
                format!(
                    "<div style=\"{FONT}\"><div style=\"font-weight:bold\">{}</div><pre style=\"margin:2px 0\">{}</pre></div>",
                    escape(title),
                    escape(&json)
                )
            }
        },
    }
}

/// A `<table>` with the title as caption; numeric cells right-aligned, header underlined.
fn table(t: &Table) -> String {
    let mut h = format!("<table style=\"border-collapse:collapse;{FONT};margin:4px 0\">");
    if !t.title.is_empty() {
        let _ = write!(
            h,
            "<caption style=\"text-align:left;font-weight:bold;padding:2px 0\">{}</caption>",
            escape(&t.title)
        );
    }
    h.push_str("<thead><tr>");
    for c in &t.columns {
        let _ = write!(
            h,
            "<th style=\"text-align:left;padding:2px 8px;border-bottom:1px solid #999\">{}</th>",
            escape(&one_line(c))
        );
    }
    h.push_str("</tr></thead><tbody>");
    for row in &t.rows {
        h.push_str("<tr>");
        for c in row {
            let align = if is_numeric(c) { "right" } else { "left" };
            let _ = write!(h, "<td style=\"text-align:{align};padding:2px 8px\">{}</td>", escape(&fmt_cell(c)));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    h
}

/// Hover text: position, id, p, kind, the replaced token for edits, and the top candidates.
fn hover(c: &CanvasCell) -> String {
    let p = c.p.map(|p| fmt_float(p as f64)).unwrap_or_else(|| "-".into());
    let kind = match &c.kind {
        CellKind::Prompt => "prompt",
        CellKind::Mask => "mask",
        CellKind::Token => "token",
        CellKind::Unmasked => "unmasked this step",
        CellKind::Edited { .. } => "edited this step",
        CellKind::Inserted => "mask opened by SPLIT this step",
        CellKind::Padded => "mask padded at the block's tail this step",
    };
    let mut s = format!("pos {} · id {} · p {p} · {kind}", c.pos, c.id);
    if let Some(from) = c.moved_from {
        let _ = write!(s, "\nmoved from pos {from} (a DELETE or SPLIT before it shifted the block)");
    }
    if let CellKind::Edited { old } = &c.kind {
        let _ = write!(s, "\nreplaced: {}", token_text(old));
    }
    if !c.top.is_empty() {
        let top: Vec<String> =
            c.top.iter().map(|(t, p)| format!("{} {}", token_text(t), fmt_float(*p as f64))).collect();
        let _ = write!(s, "\ntop: {}", top.join(", "));
    }
    s
}

/// One position as a span coloured by status, with hover text.
fn cell(c: &CanvasCell, threshold: f32) -> String {
    let base = "white-space:pre;padding:0 2px;margin:0 1px;border-radius:3px";
    let (style, body) = match &c.kind {
        CellKind::Prompt => ("color:#777;background:#f0f0f0", escape(&token_text(&c.text))),
        CellKind::Mask | CellKind::Padded => ("color:#999;background:#e4e4e4", "░".to_string()),
        CellKind::Inserted => ("color:#004a5a;background:#aee9f5;font-weight:bold", "+░".to_string()),
        CellKind::Token => ("color:#222;background:#f7f7f7", escape(&token_text(&c.text))),
        CellKind::Unmasked => ("color:#0a4a0a;background:#bff0bf;font-weight:bold", escape(&token_text(&c.text))),
        CellKind::Edited { old } => (
            "color:#5a4000;background:#ffe98a;font-weight:bold",
            format!(
                "<s style=\"opacity:.6;font-weight:normal\">{}</s>→{}",
                escape(&token_text(old)),
                escape(&token_text(&c.text))
            ),
        ),
    };
    let low = if is_low(c, threshold) { ";border-bottom:2px solid #d00000" } else { "" };
    let moved = match c.moved_from {
        Some(from) => format!("<sup style=\"color:#888;font-weight:normal\">↤{from}</sup>"),
        None => String::new(),
    };
    format!("<span title=\"{}\" style=\"{base};{style}{low}\">{body}{moved}</span>", escape_attr(&hover(c)))
}

/// A token the last Levenshtein step removed, struck out (`<del>`), with what happened in its hover text.
fn removed(r: &Removed) -> String {
    let (colour, what) = match r.why {
        RemovedWhy::Deleted => ("#b00000", "deleted by DELETE this step"),
        RemovedWhy::Truncated => ("#8a2be2", "cut off the block's tail this step (SPLIT pushed it out)"),
    };
    let body = if r.mask { "░".to_string() } else { escape(&token_text(&r.text)) };
    let title = format!("{what}\nwas at pos {} at the step start · id {}", r.pos, r.id);
    format!(
        "<del title=\"{}\" style=\"white-space:pre;padding:0 2px;margin:0 1px;color:{colour};opacity:.7\">{body}</del>",
        escape_attr(&title)
    )
}

/// Title with counts, then one row per block; the current block has an amber bar on its left.
fn canvas(c: &Canvas) -> String {
    let mut cells: Vec<&CanvasCell> = c.cells.iter().collect();
    cells.sort_by_key(|x| x.pos);
    let bl = c.block_length.max(1);
    let low = cells.iter().filter(|x| is_low(x, c.low_confidence)).count();
    let n = |f: fn(&CellKind) -> bool| cells.iter().filter(|x| f(&x.kind)).count();
    let mut h = format!("<div style=\"{FONT};line-height:1.9\">");
    let lev = if has_lev_marks(c) { format!(" · {}", lev_summary(c)) } else { String::new() };
    let _ = write!(
        h,
        "<div><b>{}</b> <span style=\"color:#888\">block {} · {} masked · {} unmasked · {} edited · {low} low (p&lt;{}){lev}</span></div>",
        escape(&c.title),
        c.current_block,
        n(CellKind::is_mask),
        n(|k| matches!(k, CellKind::Unmasked)),
        n(|k| matches!(k, CellKind::Edited { .. })),
        c.low_confidence,
    );
    let mut i = 0;
    // The end of the folded run being drawn (its rows sit in a <details> a click opens).
    let mut fold_end = None;
    while i < cells.len() {
        let block = cells[i].pos.div_euclid(bl);
        if fold_end.is_none() && !c.block_shown(block) {
            let (next, last) = c.folded_run(&cells, i);
            let which = if last == block { format!("block {block}") } else { format!("blocks {block}–{last}") };
            let _ = write!(h, "<details><summary style=\"color:#888;cursor:pointer\">{which} folded</summary>");
            fold_end = Some(next);
        }
        let bar = if block == c.current_block { "#e0a000" } else { "transparent" };
        let _ = write!(
            h,
            "<div style=\"border-left:3px solid {bar};padding-left:4px\"><span style=\"color:#888;display:inline-block;min-width:3ch\">{block}</span>"
        );
        // Deleted slots sit before the token that now follows them; cut-off tokens after the block's end.
        let mut gone = c.removed.iter().filter(|r| r.why == RemovedWhy::Deleted && r.pos.div_euclid(bl) == block).peekable();
        while i < cells.len() && cells[i].pos.div_euclid(bl) == block {
            while let Some(r) = gone.next_if(|r| r.before <= cells[i].pos) {
                h.push_str(&removed(r));
            }
            h.push_str(&cell(cells[i], c.low_confidence));
            i += 1;
        }
        gone.for_each(|r| h.push_str(&removed(r)));
        let cut: Vec<&Removed> = c.removed.iter().filter(|r| r.why == RemovedWhy::Truncated && r.pos.div_euclid(bl) == block).collect();
        if !cut.is_empty() {
            h.push_str("<span title=\"cut off the block's tail\" style=\"color:#8a2be2;padding:0 2px\">✂</span>");
            cut.iter().for_each(|r| h.push_str(&removed(r)));
        }
        h.push_str("</div>");
        if fold_end == Some(i) {
            h.push_str("</details>");
            fold_end = None;
        }
    }
    h.push_str("</div>");
    h
}

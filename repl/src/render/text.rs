//! Text forms: `plain` (no escape codes) and `ansi` (terminal colours). One code path with an `ansi` flag, so
//! the two always show the same layout; only styling differs (plain marks what colour would otherwise show).

use super::{display_width, fmt_cell, fmt_float, is_numeric, one_line, token_text};
use crate::value::{Canvas, CanvasCell, CellKind, Chart, Removed, RemovedWhy, Table, Value};

// SGR codes. Kept as constants so the canvas legend and the canvas itself cannot disagree.
const BOLD: &str = "1";
const DIM: &str = "2";
const GREEN: &str = "1;32";
const YELLOW: &str = "1;33";
const OLD: &str = "2;9;33"; // dim, struck through: the token an edit replaced
const LOW: &str = "4;31"; // underlined red: a decoded token the model is unsure of
const INSERTED: &str = "1;36"; // bold cyan: a mask SPLIT opened
const GONE: &str = "2;9;31"; // dim, struck through, red: a slot DELETE removed
const CUT: &str = "2;9;35"; // dim, struck through, magenta: a token cut off the block's tail
const CUT_MARK: &str = "✂";
const MASK_ANSI: &str = "░";
const MASK_PLAIN: &str = "_";

pub(super) fn render(v: &Value, ansi: bool) -> String {
    match v {
        Value::Message { text } => text.clone(),
        Value::Table(t) => table(t, ansi),
        Value::Steps(s) => table(&s.table, ansi),
        Value::Canvas(c) => canvas(c, ansi),
        Value::Chart(c) => chart(c, ansi),
        Value::Data { title, data } => match super::data_table(title, data) {
            Some(t) => table(&t, ansi),
            None => {
                let json = serde_json::to_string_pretty(data).unwrap_or_else(|_| data.to_string());
                format!("{}\n{json}", paint(title, BOLD, ansi))
            }
        },
    }
}

/// Wraps `s` in an SGR sequence when rendering for the terminal.
fn paint(s: &str, code: &str, ansi: bool) -> String {
    if ansi && !code.is_empty() && !s.is_empty() {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// Pads to a display width (not a byte or char count, so CJK tokens keep columns aligned).
fn pad(s: &str, width: usize, right: bool) -> String {
    let fill = " ".repeat(width.saturating_sub(display_width(s)));
    if right {
        format!("{fill}{s}")
    } else {
        format!("{s}{fill}")
    }
}

/// Title, header, a rule, then rows. A column of numbers is right-aligned, any other column left-aligned (a number
/// among text, as in a key-value table, stays by its neighbours); rows shorter than the header are padded with
/// blanks, longer ones widen the table instead of losing cells.
fn table(t: &Table, ansi: bool) -> String {
    let ncols = t.rows.iter().map(Vec::len).chain([t.columns.len()]).max().unwrap_or(0);
    let header: Vec<String> = (0..ncols).map(|i| t.columns.get(i).map(|c| one_line(c)).unwrap_or_default()).collect();
    let body: Vec<Vec<String>> = t.rows.iter().map(|r| (0..ncols).map(|i| r.get(i).map(fmt_cell).unwrap_or_default()).collect()).collect();
    let widths: Vec<usize> = (0..ncols)
        .map(|i| body.iter().map(|r| display_width(&r[i])).chain([display_width(&header[i])]).max().unwrap_or(0))
        .collect();
    // A column is right-aligned when all its non-blank cells are numbers, so its header lines up with them.
    let numeric: Vec<bool> = (0..ncols)
        .map(|i| {
            let mut cells = t.rows.iter().filter_map(|r| r.get(i)).filter(|c| !fmt_cell(c).is_empty()).peekable();
            cells.peek().is_some() && cells.all(is_numeric)
        })
        .collect();
    let mut lines = Vec::with_capacity(t.rows.len() + 3);
    if !t.title.is_empty() {
        lines.push(paint(&one_line(&t.title), BOLD, ansi));
    }
    let head: Vec<String> = (0..ncols).map(|i| pad(&header[i], widths[i], numeric[i])).collect();
    lines.push(paint(head.join("  ").trim_end(), BOLD, ansi));
    let rule: Vec<String> = widths.iter().map(|w| "─".repeat(*w)).collect();
    lines.push(paint(&rule.join("  "), DIM, ansi));
    for row in &body {
        let cells: Vec<String> = row.iter().enumerate().map(|(i, s)| pad(s, widths[i], numeric[i])).collect();
        lines.push(cells.join("  ").trim_end().to_string());
    }
    if body.is_empty() {
        lines.push(paint("(no rows)", DIM, ansi));
    }
    lines.join("\n")
}

/// Whether a position counts as low-confidence: only decoded tokens (a prompt token's or a mask's p says
/// nothing about the decode).
pub(super) fn is_low(c: &CanvasCell, threshold: f32) -> bool {
    let decoded = matches!(c.kind, CellKind::Token | CellKind::Unmasked | CellKind::Edited { .. });
    decoded && c.p.is_some_and(|p| p < threshold)
}

/// One canvas position. Plain text has no colour, so there: masks `_`, this step's unmasked tokens `«tok»`,
/// edits `old→new`, low confidence a trailing `?`. In ANSI: masks `░` dim, unmasked green, edits yellow with
/// the old token struck through, low confidence underlined (red for older tokens, whose colour is free).
/// Levenshtein steps add: SPLIT's new mask `+_` (`+░` cyan), and `↤N` after a token that moved from N.
fn canvas_token(c: &CanvasCell, threshold: f32, ansi: bool) -> String {
    let t = token_text(&c.text);
    let low = is_low(c, threshold);
    let under = |code: &str| if low { format!("4;{code}") } else { code.to_string() };
    let s = match &c.kind {
        CellKind::Prompt => paint(&t, DIM, ansi),
        CellKind::Mask | CellKind::Padded => paint(if ansi { MASK_ANSI } else { MASK_PLAIN }, DIM, ansi),
        CellKind::Inserted => paint(&format!("+{}", if ansi { MASK_ANSI } else { MASK_PLAIN }), INSERTED, ansi),
        CellKind::Token => paint(&t, if low { LOW } else { "" }, ansi),
        CellKind::Unmasked if ansi => paint(&t, &under(GREEN), ansi),
        CellKind::Unmasked => format!("«{t}»"),
        CellKind::Edited { old } => {
            format!(
                "{}{}{}",
                paint(&token_text(old), OLD, ansi),
                paint("→", YELLOW, ansi),
                paint(&t, &under(YELLOW), ansi)
            )
        }
    };
    let s = match c.moved_from {
        Some(from) => format!("{s}{}", paint(&format!("↤{from}"), DIM, ansi)),
        None => s,
    };
    if low && !ansi {
        format!("{s}?")
    } else {
        s
    }
}

/// A token the last step removed: struck through (`~~tok~~` in plain text), red when deleted, magenta when cut
/// off the tail.
fn removed_token(r: &Removed, ansi: bool) -> String {
    let t = match (r.mask, ansi) {
        (true, true) => MASK_ANSI.to_string(),
        (true, false) => MASK_PLAIN.to_string(),
        (false, _) => token_text(&r.text),
    };
    if ansi {
        paint(&t, if r.why == RemovedWhy::Deleted { GONE } else { CUT }, true)
    } else {
        format!("~~{t}~~")
    }
}

/// Title with counts, a legend, then one line per block (`>` marks the current one). Consecutive masks are
/// drawn without separators (one symbol each, so they can still be counted); other tokens are space-separated
/// so token boundaries stay visible.
fn canvas(c: &Canvas, ansi: bool) -> String {
    let mut cells: Vec<&CanvasCell> = c.cells.iter().collect();
    cells.sort_by_key(|x| x.pos);
    let bl = c.block_length.max(1);
    let count = |f: fn(&CellKind) -> bool| cells.iter().filter(|x| f(&x.kind)).count();
    let masks = count(CellKind::is_mask);
    let unmasked = count(|k| matches!(k, CellKind::Unmasked));
    let edited = count(|k| matches!(k, CellKind::Edited { .. }));
    let low = cells.iter().filter(|x| is_low(x, c.low_confidence)).count();
    let lev = has_lev_marks(c);
    let lev_counts = if lev { format!(" · {}", lev_summary(c)) } else { String::new() };
    let mut out = vec![format!(
        "{}  {}",
        paint(&one_line(&c.title), BOLD, ansi),
        paint(
            &format!("block {} · {masks} masked · {unmasked} unmasked · {edited} edited · {low} low{lev_counts}", c.current_block),
            DIM,
            ansi
        )
    )];
    let th = format!("p<{}", c.low_confidence);
    out.push(if ansi {
        format!(
            "{} {}  {} mask  {}  {}{}{} edited  {}",
            paint("legend:", DIM, true),
            paint("prompt", DIM, true),
            paint(MASK_ANSI, DIM, true),
            paint("unmasked", GREEN, true),
            paint("old", OLD, true),
            paint("→", YELLOW, true),
            paint("new", YELLOW, true),
            paint(&th, LOW, true)
        )
    } else {
        format!("legend: {MASK_PLAIN} mask  «unmasked»  old→new edited  tok? {th}")
    });
    if lev {
        // Only after a Levenshtein step, so the LLaDA2.1 canvas stays as it was.
        let m = if ansi { MASK_ANSI } else { MASK_PLAIN };
        let (ins, del, cut) = if ansi {
            (paint(&format!("+{m}"), INSERTED, true), paint("tok", GONE, true), paint("tok", CUT, true))
        } else {
            (format!("+{m}"), "~~tok~~".to_string(), "~~tok~~".to_string())
        };
        out.push(format!(
            "        {ins} inserted (SPLIT)  {del} deleted  tok{} moved from N  {} {cut} cut off the tail",
            paint("↤N", DIM, ansi),
            paint(CUT_MARK, INSERTED, ansi)
        ));
    }
    let last_block = cells.last().map(|x| x.pos.div_euclid(bl)).unwrap_or(0).max(c.current_block);
    let idx_width = last_block.to_string().len();
    let mut i = 0;
    while i < cells.len() {
        let block = cells[i].pos.div_euclid(bl);
        if !c.block_shown(block) {
            let (next, last) = c.folded_run(&cells, i);
            let which = if last == block { format!("block {block}") } else { format!("blocks {block}-{last}") };
            out.push(paint(&format!(" {:>idx_width$} ⋯ {which} folded (`canvas all` shows every block)", ""), DIM, ansi));
            i = next;
            continue;
        }
        let mut line = String::new();
        let mut prev_mask = None;
        let mut push = |line: &mut String, s: String, is_mask: bool| {
            if prev_mask.is_some() && !(is_mask && prev_mask == Some(true)) {
                line.push(' ');
            }
            line.push_str(&s);
            prev_mask = Some(is_mask);
        };
        // Deleted slots of this block, drawn before the token that now follows them.
        let mut gone = c.removed.iter().filter(|r| r.why == RemovedWhy::Deleted && r.pos.div_euclid(bl) == block).peekable();
        while i < cells.len() && cells[i].pos.div_euclid(bl) == block {
            while let Some(r) = gone.next_if(|r| r.before <= cells[i].pos) {
                push(&mut line, removed_token(r, ansi), false);
            }
            push(&mut line, canvas_token(cells[i], c.low_confidence, ansi), cells[i].kind.is_mask());
            i += 1;
        }
        for r in gone {
            push(&mut line, removed_token(r, ansi), false);
        }
        let cut: Vec<String> = c
            .removed
            .iter()
            .filter(|r| r.why == RemovedWhy::Truncated && r.pos.div_euclid(bl) == block)
            .map(|r| removed_token(r, ansi))
            .collect();
        if !cut.is_empty() {
            push(&mut line, format!("{} {}", paint(CUT_MARK, INSERTED, ansi), cut.join(" ")), false);
        }
        let marker = if block == c.current_block { paint(">", YELLOW, ansi) } else { " ".into() };
        out.push(format!("{marker}{block:>idx_width$} │ {line}"));
    }
    out.join("\n")
}

/// Whether the canvas carries a Levenshtein step's marks (insertions, padding, moves, removals).
pub(super) fn has_lev_marks(c: &Canvas) -> bool {
    !c.removed.is_empty() || c.cells.iter().any(|x| matches!(x.kind, CellKind::Inserted | CellKind::Padded) || x.moved_from.is_some())
}

/// "2 deleted · 1 inserted · 1 moved · 0 cut": the last Levenshtein step's effect on the canvas.
pub(super) fn lev_summary(c: &Canvas) -> String {
    let gone = |w: RemovedWhy| c.removed.iter().filter(|r| r.why == w).count();
    format!(
        "{} deleted · {} inserted · {} moved · {} cut",
        gone(RemovedWhy::Deleted),
        c.cells.iter().filter(|x| x.kind == CellKind::Inserted).count(),
        c.cells.iter().filter(|x| x.moved_from.is_some()).count(),
        gone(RemovedWhy::Truncated)
    )
}

/// Per series: name, point count, min/max/last of y, and a sparkline of up to 40 buckets.
fn chart(c: &Chart, ansi: bool) -> String {
    let mut out = vec![paint(&one_line(&c.title), BOLD, ansi)];
    let name_w = c.series.iter().map(|s| display_width(&one_line(&s.name))).max().unwrap_or(0);
    for s in &c.series {
        let ys: Vec<f64> = s.points.iter().map(|p| p.1).filter(|y| y.is_finite()).collect();
        let name = pad(&one_line(&s.name), name_w, false);
        if ys.is_empty() {
            out.push(format!("  {name}  n={}  (no finite points)", s.points.len()));
            continue;
        }
        let (lo, hi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(*y), b.max(*y)));
        let last = ys[ys.len() - 1];
        out.push(format!(
            "  {name}  n={}  min {}  max {}  last {}  {}",
            s.points.len(),
            fmt_float(lo),
            fmt_float(hi),
            fmt_float(last),
            paint(&sparkline(&ys, 40), GREEN, ansi)
        ));
    }
    if c.series.is_empty() {
        out.push("  (no series)".into());
    }
    out.push(paint(&format!("  x: {}  y: {}", one_line(&c.x_label), one_line(&c.y_label)), DIM, ansi));
    out.join("\n")
}

/// ▁..█ over at most `width` buckets (bucket means when there are more points); a flat series draws mid-height.
pub(super) fn sparkline(ys: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if ys.is_empty() || width == 0 {
        return String::new();
    }
    let n = ys.len().min(width);
    let buckets: Vec<f64> = (0..n)
        .map(|b| {
            let (from, to) = (b * ys.len() / n, ((b + 1) * ys.len() / n).max(b * ys.len() / n + 1));
            ys[from..to].iter().sum::<f64>() / (to - from) as f64
        })
        .collect();
    let (lo, hi) = buckets.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(*y), b.max(*y)));
    buckets
        .iter()
        .map(|y| if hi > lo { BARS[(((y - lo) / (hi - lo)) * 7.0).round() as usize] } else { BARS[3] })
        .collect()
}

//! Tests of the whole render module: what each form must and must not contain.

use super::*;
use crate::value::{Canvas, CanvasCell, Cell, CellKind, Chart, Series, Table};

#[test]
fn floats_have_four_significant_digits() {
    assert_eq!(fmt_float(0.0123456), "0.01235");
    assert_eq!(fmt_float(1.23456), "1.235");
    assert_eq!(fmt_float(-12.3456), "-12.35");
    assert_eq!(fmt_float(123456.7), "123457");
    assert_eq!(fmt_float(0.5), "0.5000");
    assert_eq!(fmt_float(0.0), "0");
    assert_eq!(fmt_float(1.5e-7), "1.500e-7");
    assert_eq!(fmt_float(f64::NAN), "NaN");
}

#[test]
fn whitespace_and_control_characters_are_visible() {
    assert_eq!(token_text(" the\n"), "·the⏎");
    assert_eq!(token_text(""), "∅");
    assert_eq!(one_line("a b\t\x1b[31m"), "a b⇥\\x1b[31m");
    assert_eq!(display_width("ab中文"), 6);
}

#[test]
fn render_all_joins_parts() {
    let chart = Value::Chart(Chart {
        title: "c".into(),
        x_label: "x".into(),
        y_label: "y".into(),
        series: vec![Series { name: "s".into(), points: vec![(0.0, 1.0)] }],
    });
    let vs = vec![Value::Message { text: "one".into() }, chart, Value::Message { text: "two".into() }];
    let b = render_all(&vs);
    assert!(b.plain.starts_with("one\n"));
    assert!(b.plain.ends_with("\ntwo"));
    assert_eq!(b.json.as_array().map(Vec::len), Some(3));
    assert_eq!(b.json[0]["type"], "message");
    assert!(b.svg.as_deref().is_some_and(|s| s.starts_with("<svg")));
    assert!(b.html.contains("<svg"));
    assert!(render_all(&[]).svg.is_none());
}

fn cell(pos: i64, text: &str, kind: CellKind, p: Option<f32>) -> CanvasCell {
    CanvasCell {
        pos,
        id: 1000 + pos,
        text: text.into(),
        kind,
        p,
        top: vec![("<|mask|>".into(), 0.5), (" a".into(), 0.25)],
        moved_from: None,
    }
}

/// Two blocks of 4: prompt (with a special token and a newline), then the current block with every status.
fn sample_canvas() -> Value {
    Value::Canvas(Canvas {
        title: "decode".into(),
        block_length: 4,
        current_block: 1,
        low_confidence: 0.3,
        removed: Vec::new(),
        fold: true,
        cells: vec![
            cell(0, "<role>HUMAN</role>", CellKind::Prompt, None),
            cell(1, "Hi", CellKind::Prompt, None),
            cell(2, "\n", CellKind::Prompt, None),
            cell(3, " The", CellKind::Token, Some(0.9)),
            cell(4, " cat", CellKind::Unmasked, Some(0.95)),
            cell(5, " sat", CellKind::Edited { old: " sit".into() }, Some(0.8)),
            cell(6, " on", CellKind::Token, Some(0.1)),
            cell(7, "<|mask|>", CellKind::Mask, None),
        ],
    })
}

fn sample_table() -> Value {
    Value::Table(Table {
        title: "stats".into(),
        columns: vec!["name".into(), "n".into(), "p".into(), "ok".into()],
        rows: vec![
            vec!["alpha".into(), Cell::Int(3), Cell::Float(0.123456), Cell::Bool(true)],
            vec!["b".into(), Cell::Int(12345), Cell::Empty, Cell::Bool(false)],
        ],
    })
}

fn chart(series: Vec<Series>) -> Value {
    Value::Chart(Chart { title: "p <&> \"q\"".into(), x_label: "step".into(), y_label: "p".into(), series })
}

#[test]
fn html_escapes_everything_from_the_model() {
    let b = render_all(&[
        sample_canvas(),
        sample_table(),
        Value::Message { text: "<|mask|> & <b>".into() },
        Value::Data { title: "<|mask|>".into(), data: serde_json::json!({"t": "<|mask|>"}) },
        chart(vec![Series { name: "<|mask|>".into(), points: vec![(0.0, 1.0), (1.0, 2.0)] }]),
    ]);
    assert!(!b.html.contains("<|mask|>"), "{}", b.html);
    assert!(!b.html.contains("<role>"));
    assert!(b.html.contains("&lt;role&gt;HUMAN&lt;/role&gt;"));
    assert!(b.html.contains("&lt;|mask|&gt; &amp; &lt;b&gt;"));
    assert!(!b.svg.unwrap().contains("<|mask|>"));
}

#[test]
fn ansi_codes_only_in_ansi() {
    for v in [sample_canvas(), sample_table(), chart(vec![Series { name: "s".into(), points: vec![(0.0, 1.0)] }])] {
        let b = render(&v);
        assert!(!b.plain.contains('\x1b'), "{}", b.plain);
        assert!(b.ansi.contains("\x1b["));
    }
    // A token holding ESC must not reach the terminal raw either.
    let msg = Value::Table(Table { title: "t".into(), columns: vec!["x".into()], rows: vec![vec!["\x1b[2J".into()]] });
    assert!(!render(&msg).plain.contains('\x1b'));
}

#[test]
fn table_columns_align() {
    let plain = render(&sample_table()).plain;
    let lines: Vec<&str> = plain.lines().collect();
    assert_eq!(lines[0], "stats");
    assert_eq!(lines[1], "name       n       p  ok");
    assert_eq!(lines[3], "alpha      3  0.1235  true");
    assert_eq!(lines[4], "b      12345          false");
    // The rule spans every column, as wide as the widest row.
    assert_eq!(lines[2].chars().count(), lines[4].chars().count());
    let html = render(&sample_table()).html;
    assert!(html.starts_with("<table") && html.contains("<caption") && html.matches("<tr>").count() == 3);
}

#[test]
fn a_number_among_text_stays_by_its_neighbours() {
    // A key-value table (the session's `info`): one column holds text and numbers; a long text must not push
    // the numbers to its far edge.
    let t = Table {
        title: "Model".into(),
        columns: vec!["".into(), "".into()],
        rows: vec![vec!["parameters".into(), 1757568i64.into()], vec!["by part".into(), "routed experts 4.50, attention 0.75".into()]],
    };
    let plain = render(&Value::Table(t)).plain;
    let lines: Vec<&str> = plain.lines().collect();
    assert_eq!(lines[3], "parameters  1757568");
    assert_eq!(lines[4], "by part     routed experts 4.50, attention 0.75");
}

#[test]
fn canvas_text_shows_each_status() {
    let b = render(&sample_canvas());
    let lines: Vec<&str> = b.plain.lines().collect();
    assert_eq!(lines[2], " 0 │ <role>HUMAN</role> Hi ⏎ ·The");
    assert_eq!(lines[3], ">1 │ «·cat» ·sit→·sat ·on? _");
    // ANSI: unmasked green, edit yellow with the old token struck through, mask as ░, low p underlined red.
    assert!(b.ansi.contains("\x1b[1;32m·cat\x1b[0m"));
    assert!(b.ansi.contains("\x1b[2;9;33m·sit\x1b[0m\x1b[1;33m→\x1b[0m\x1b[1;33m·sat\x1b[0m"));
    assert!(b.ansi.contains("\x1b[4;31m·on\x1b[0m"));
    assert!(b.ansi.contains("░"));
    assert!(!b.ansi.contains("<|mask|>"));
}

#[test]
fn canvas_html_has_hover_text() {
    let html = render(&sample_canvas()).html;
    assert!(html.contains("title=\"pos 5 · id 1005 · p 0.8000 · edited this step&#10;replaced: ·sit&#10;top: &lt;|mask|&gt; 0.5000, ·a 0.2500\""));
    assert!(html.contains("<s style=\"opacity:.6;font-weight:normal\">·sit</s>→·sat"));
    assert_eq!(html.matches("border-bottom:2px solid #d00000").count(), 1);
    assert_eq!(html.matches("<span title=").count(), 8);
}

#[test]
fn chart_svg_is_well_formed_ish() {
    let series = vec![
        Series { name: "a".into(), points: (0..50).map(|i| (i as f64, (i as f64).sin())).collect() },
        Series { name: "b".into(), points: vec![(0.0, 0.5), (49.0, 0.7)] },
        Series { name: "c".into(), points: vec![] },
    ];
    let b = render(&chart(series));
    let svg = b.svg.unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2, "no line for the empty series");
    assert!(!svg.contains(">c</text>"), "and no legend entry");
    assert!(svg.contains("stroke-dasharray"), "the second series is dashed, so it shows over an equal first one");
    assert!(svg.contains("p &lt;&amp;&gt; &quot;q&quot;"));
    assert_eq!(svg.matches('<').count(), svg.matches('>').count());
    assert!(b.plain.contains("a  n=50"));
    assert!(b.plain.contains("c  n=0  (no finite points)"));
}

#[test]
fn degenerate_charts_have_no_nan() {
    let cases = vec![
        vec![],
        vec![Series { name: "empty".into(), points: vec![] }],
        vec![Series { name: "one".into(), points: vec![(3.0, 7.0)] }],
        vec![Series { name: "zero".into(), points: vec![(0.0, 0.0)] }],
        vec![Series { name: "flat".into(), points: vec![(0.0, 2.0), (5.0, 2.0)] }],
        vec![Series { name: "nan".into(), points: vec![(f64::NAN, 1.0), (1.0, f64::INFINITY), (2.0, 1.0)] }],
        vec![Series { name: "huge".into(), points: vec![(0.0, -f64::MAX), (1.0, f64::MAX)] }],
    ];
    for series in cases {
        let n = series.iter().filter(|s| s.points.iter().any(|(x, y)| x.is_finite() && y.is_finite())).count();
        let b = render(&chart(series));
        let svg = b.svg.unwrap();
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), n);
        assert!(!b.plain.contains("NaN"));
    }
    assert_eq!(text::sparkline(&[1.0, 1.0], 40), "▄▄");
    assert_eq!(text::sparkline(&[0.0, 1.0, 2.0], 40), "▁▅█");
    assert_eq!(text::sparkline(&(0..100).map(f64::from).collect::<Vec<_>>(), 10).chars().count(), 10);
}

/// A hand-made LLaDA2.2 step on one block of 8 (prompt `<role> Hi`): slot 2 ` a` DELETE, slot 3 ` b` edited to
/// ` x`, the mask at 4 unmasked to ` y`, SPLIT at ` c` (5) and ` d` (6); the block grows to 9 and ` e` (7)
/// falls off the tail. After the step: `<role> Hi x y M c M d` (section 3.1's rules).
fn lev_canvas() -> Value {
    use dllm_engine::decode::{Edit, LevStep, StepReport, Unmask, WriteKind};
    const M: i64 = 1;
    let text = |t: i64| -> String {
        match t {
            10 => "<role>", 11 => "Hi", 20 => " a", 21 => " b", 22 => " c", 23 => " d", 24 => " e", 30 => " x", 31 => " y", M => "<|mask|>",
            _ => "?",
        }
        .into()
    };
    let edit = |pos, old, new, kind| Edit { pos, old, new, p: 0.9, kind, old_text: String::new(), new_text: String::new() };
    let report = StepReport {
        step: 0,
        block: 0,
        block_step: 0,
        gamma: vec![Unmask { pos: 4, token: 31, p: 0.8, kind: WriteKind::Token, text: String::new() }],
        delta: vec![
            edit(2, 20, 90, WriteKind::Delete),
            edit(3, 21, 30, WriteKind::Token),
            edit(5, 22, 91, WriteKind::Split),
            edit(6, 23, 91, WriteKind::Split),
        ],
        masks_left: 2,
        fallback: false,
        ended_before: vec![],
        block_ended: false,
        advanced_to: None,
        finished: false,
        revised_blocks: vec![],
        span: (0, 8),
        forward_ms: 0.0,
        total_ms: 0.0,
        tpf: 0.0,
        tokens: vec![10, 11, 30, 31, M, 22, M, 23],
        lev: Some(LevStep {
            start: 0,
            slots: vec![Some(0), Some(1), None, Some(2), Some(3), Some(5), Some(7), None],
            deleted: vec![2],
            split: vec![5, 6],
            inserted: vec![4, 6],
            pad: 0,
            truncated: vec![(7, 24)],
            orig: vec![false; 8],
            originals: 1,
            introduced: 0,
            need: 1,
            post: 0,
            final_round: false,
            antiloop: vec![],
        }),
    };
    let tokens = report.tokens.clone();
    let (marks, removed) = crate::session::mark_cells(&tokens, 2, M, Some(&report), &text);
    let cells = marks
        .into_iter()
        .enumerate()
        .map(|(i, (kind, moved_from))| CanvasCell { pos: i as i64, id: tokens[i], text: text(tokens[i]), kind, p: None, top: vec![], moved_from })
        .collect();
    Value::Canvas(Canvas { title: "decode".into(), block_length: 8, current_block: 0, cells, low_confidence: 0.3, removed, fold: true })
}

#[test]
fn canvas_marks_a_levenshtein_step() {
    let b = render(&lev_canvas());
    let lines: Vec<&str> = b.plain.lines().collect();
    assert_eq!(lines[0], "decode  block 0 · 2 masked · 1 unmasked · 1 edited · 0 low · 1 deleted · 2 inserted · 3 moved · 1 cut");
    assert!(lines[2].contains("+_ inserted (SPLIT)") && lines[2].contains("~~tok~~ deleted"), "{}", lines[2]);
    // The deleted ` a` stands where it stood, before ` x` (which moved from 3 to 2); ` c` kept its place
    // behind SPLIT's mask; the cut ` e` comes after the block's end.
    assert_eq!(lines[3], ">0 │ <role> Hi ~~·a~~ ·b→·x↤3 «·y»↤4 +_ ·c +_ ·d↤6 ✂ ~~·e~~");
    assert!(b.ansi.contains("\x1b[2;9;31m·a\x1b[0m"), "deleted: dim red struck through");
    assert!(b.ansi.contains("\x1b[1;36m+░\x1b[0m"), "inserted mask: cyan");
    assert!(b.ansi.contains("\x1b[2;9;35m·e\x1b[0m"), "cut off: dim magenta struck through");
    assert!(b.ansi.contains("\x1b[2m↤3\x1b[0m"));
    let html = &b.html;
    assert!(html.contains("<del title=\"deleted by DELETE this step&#10;was at pos 2 at the step start · id 20\""), "{html}");
    assert!(html.contains("cut off the block&#39;s tail this step"));
    assert_eq!(html.matches("<del ").count(), 2);
    assert!(html.contains("mask opened by SPLIT this step"));
    assert!(html.contains("moved from pos 3"));
    assert!(html.contains("<sup style=\"color:#888;font-weight:normal\">↤3</sup>"));
    // Deleted before ` x`, which is the third cell; cut after the last cell.
    let del = html.find("<del ").unwrap();
    assert!(html[..del].matches("<span title=").count() == 2);
    assert!(html.rfind("<del ").unwrap() > html.rfind("<span title=\"pos 7").unwrap());
    assert_eq!(b.json["cells"][4]["kind"], "inserted");
    assert_eq!(b.json["cells"][2]["moved_from"], 3);
    assert_eq!(b.json["removed"][0]["why"], "deleted");
    assert_eq!(b.json["removed"][1]["why"], "truncated");
    assert!(b.json["cells"][0].get("moved_from").is_none(), "no move, no field");
}

#[test]
fn substitution_canvas_has_no_levenshtein_marks() {
    let b = render(&sample_canvas());
    assert!(!b.plain.contains("deleted") && !b.plain.contains('✂') && !b.html.contains("<del"));
    assert!(b.json.get("removed").is_none());
}

#[test]
fn chart_ticks_read_apart_and_long_legends_wrap() {
    // Probabilities that barely move: every y label distinct (they read "1.000, 1.0000, 0.9999, 0.9999" before).
    let series = vec![
        Series { name: "masks left in block".into(), points: (0..10).map(|i| (i as f64, 0.99990 + 1e-5 * i as f64)).collect() },
        Series { name: "a very long series name that needs more than two lines".into(), points: vec![(0.0, 0.9999)] },
    ];
    let svg = render(&chart(series)).svg.unwrap();
    let labels: Vec<&str> = svg
        .split("text-anchor=\"end\" fill=\"#444\">")
        .skip(1)
        .map(|t| t.split('<').next().unwrap())
        .collect();
    assert!(labels.len() >= 3, "{labels:?}");
    let mut unique = labels.clone();
    unique.dedup();
    assert_eq!(unique.len(), labels.len(), "tick labels repeat: {labels:?}");
    // The legend breaks at a space instead of cutting "masks left in blo…".
    assert!(svg.contains(">masks left in</text>") && svg.contains(">block</text>"), "{svg}");
    assert!(svg.contains("…</text>"), "a name longer than two lines is cut on the second");
}

/// Twelve blocks of 2 (prompt in block 0), the decode at block 6 with a write in block 2 (an MBE revision).
fn long_canvas(fold: bool) -> Canvas {
    let cells = (0..24)
        .map(|pos| {
            let kind = match pos {
                0 | 1 => CellKind::Prompt,
                4 => CellKind::Edited { old: "x".into() },
                p if p >= 14 => CellKind::Mask,
                _ => CellKind::Token,
            };
            cell(pos, "t", kind, Some(0.9))
        })
        .collect();
    Canvas { title: "long".into(), block_length: 2, current_block: 6, cells, low_confidence: 0.3, removed: Vec::new(), fold }
}

#[test]
fn a_long_canvas_folds_all_but_the_current_block_its_neighbours_and_changed_blocks() {
    let c = long_canvas(true);
    let shown: Vec<i64> = (0..12).filter(|&b| c.block_shown(b)).collect();
    assert_eq!(shown, vec![2, 5, 6, 7]);
    let text = render(&Value::Canvas(c.clone())).plain;
    for folded in ["blocks 0-1 folded", "blocks 3-4 folded", "blocks 8-11 folded"] {
        assert!(text.contains(folded), "{folded}:\n{text}");
    }
    assert_eq!(text.matches(" │ ").count(), 4, "four block rows:\n{text}");
    let html = render(&Value::Canvas(c)).html;
    assert_eq!(html.matches("<details>").count(), 3);
    assert_eq!(html.matches("<details>").count(), html.matches("</details>").count());
    assert!(html.contains("blocks 8–11 folded"));
    // Unfolded, or short: every block.
    let all = render(&Value::Canvas(long_canvas(false))).plain;
    assert!(!all.contains("folded") && all.matches(" │ ").count() == 12, "{all}");
    assert!(!render(&sample_canvas()).plain.contains("folded"));
}

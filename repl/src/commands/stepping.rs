//! Starting and stepping a decode: `prompt`, `chat`, `prompt-ids`, `step`, `run`, `continue`, and the steps table
//! (Gamma_t, Delta_t and a Levenshtein step's facts) they show.

use dllm_engine::decode::{Denoiser, LevStep, StepReport, WriteKind};

use dllm_engine::Role;

use super::{msg, usage};
use crate::parse::Args;
use crate::session::{CmdResult, CommandError, Session};
use crate::value::{Cell, Steps, Table, Value};

pub(super) fn start(s: &mut Session, ids: Vec<i64>) -> CmdResult {
    let n = ids.len();
    let canvas = s.prompt_ids(&ids)?;
    let d = s.decoder()?;
    let text = format!(
        "prompt: {n} tokens; decoding {} tokens in blocks of {} from block {} on branch `{}`",
        d.settings.gen_length,
        d.settings.block_length,
        d.cursor().block,
        s.current
    );
    Ok(vec![msg(text), Value::Canvas(canvas)])
}

/// The TEXT of `prompt`/`chat`: the rest of the line as typed, or the one quoted word without its quotes.
fn text_arg<'a>(a: &'a Args) -> &'a str {
    a.text("TEXT").unwrap_or_default()
}

pub(super) fn prompt(s: &mut Session, a: &Args) -> CmdResult {
    let ids = s.tokenizer()?.encode(text_arg(a))?;
    start(s, ids)
}

pub(super) fn chat(s: &mut Session, a: &Args) -> CmdResult {
    let tok = s.tokenizer()?;
    let ids = tok.encode(&tok.chat(&[(Role::Human, text_arg(a))], true)?)?;
    start(s, ids)
}

pub(super) fn prompt_ids(s: &mut Session, a: &Args) -> CmdResult {
    let text = a.text("ID,ID,...").unwrap_or_default();
    let ids: Result<Vec<i64>, _> = text.split(',').map(|t| t.trim().parse::<i64>()).collect();
    let ids = ids.map_err(|_| usage("prompt-ids", format!("expected comma-separated integers, got {text:?}")))?;
    start(s, ids)
}

/// A write's token for the steps table: LLaDA2.2's edit operations by name (their vocabulary texts are
/// placeholders in real checkpoints), other tokens as quoted text.
pub(super) fn written(kind: WriteKind, text: &str) -> String {
    match kind {
        WriteKind::Delete => "DEL".into(),
        WriteKind::Split => "SPLIT".into(),
        WriteKind::Token => format!("{text:?}"),
    }
}

/// One Levenshtein step's facts in a cell: masks at the start (original + introduced) and the minimum it
/// had to unmask, the post counter, then what moved: deleted and split slots (step-start positions),
/// inserted masks (after the step), padding, cut positions, the final round and anti-loop redraws.
fn lev_facts(l: &LevStep, edit_ids: Option<(i64, i64)>) -> String {
    let list = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let mut f = vec![format!("masks {}+{} need {}", l.originals, l.introduced, l.need), format!("post {}", l.post)];
    if !l.deleted.is_empty() {
        f.push(format!("del {}", list(&l.deleted)));
    }
    if !l.split.is_empty() {
        f.push(format!("split {}", list(&l.split)));
    }
    if !l.inserted.is_empty() {
        f.push(format!("ins {}", list(&l.inserted)));
    }
    if l.pad > 0 {
        f.push(format!("pad {}", l.pad));
    }
    if !l.truncated.is_empty() {
        f.push(format!("cut {}", list(&l.truncated.iter().map(|t| t.0).collect::<Vec<_>>())));
    }
    if l.final_round {
        f.push("final".into());
    }
    for r in &l.antiloop {
        let name = |id: i64, text: &str| edit_op(id, edit_ids).map(String::from).unwrap_or_else(|| format!("{text:?}"));
        f.push(format!("redraw {}:{}→{}", r.pos, name(r.from, &r.from_text), name(r.to, &r.to_text)));
    }
    f.join(" · ")
}

/// The steps table titled `title` ([`steps`]).
pub(super) fn steps_table(title: &str, reports: &[StepReport], edit_ids: Option<(i64, i64)>) -> Value {
    let mut s = steps(reports, edit_ids);
    s.table.title = title.into();
    Value::Steps(s)
}

/// The steps table of `reports` (titled "Steps"); a `Levenshtein` column appears only when some step is a
/// Levenshtein step (LLaDA2.1 tables stay as they were). Its JSON also carries the complete reports.
pub(crate) fn steps(reports: &[StepReport], edit_ids: Option<(i64, i64)>) -> Steps {
    let lev = reports.iter().any(|r| r.lev.is_some());
    let rows = reports
        .iter()
        .map(|r| {
            let g: Vec<String> = r.gamma.iter().map(|u| format!("{}:{}", u.pos, written(u.kind, &u.text))).collect();
            let d: Vec<String> = r.delta.iter().map(|e| format!("{}:{:?}→{}", e.pos, e.old_text, written(e.kind, &e.new_text))).collect();
            let mut row = vec![
                r.step.into(),
                r.block.into(),
                r.block_step.into(),
                g.join(" ").into(),
                d.join(" ").into(),
                r.masks_left.into(),
                r.fallback.into(),
                r.tpf.into(),
            ];
            if lev {
                row.push(r.lev.as_ref().map(|l| lev_facts(l, edit_ids)).into());
            }
            row
        })
        .collect();
    let mut columns: Vec<String> =
        ["step", "block", "in block", "Gamma (pos:token)", "Delta (pos:old→new)", "masks left", "fallback", "TPF"].map(String::from).to_vec();
    if lev {
        columns.push("Levenshtein".into());
    }
    Steps { table: Table { title: "Steps".into(), columns, rows }, reports: reports.to_vec() }
}

/// "DELETE" / "SPLIT" when `id` is one of the model's edit operations (`edit_ids`): real checkpoints have only
/// placeholder texts for them.
pub(super) fn edit_op(id: i64, edit_ids: Option<(i64, i64)>) -> Option<&'static str> {
    match edit_ids {
        Some((del, _)) if id == del => Some("DELETE"),
        Some((_, split)) if id == split => Some("SPLIT"),
        _ => None,
    }
}

/// The resident model's (DELETE, SPLIT) ids, if it has them.
pub(super) fn edit_ids(s: &Session) -> Option<(i64, i64)> {
    s.ready().ok().and_then(|l| l.model.edit_tokens())
}

fn after_steps(s: &mut Session, reports: Vec<dllm_engine::decode::StepReport>, stop: Option<String>) -> CmdResult {
    let mut out = Vec::new();
    if !reports.is_empty() {
        out.push(steps_table("Steps", &reports, edit_ids(s)));
    }
    out.push(s.canvas_value("canvas")?);
    if !s.watches.is_empty() {
        let d = s.decoder()?;
        let rows: Vec<Vec<Cell>> = s
            .watches
            .clone()
            .into_iter()
            .filter(|&p| p >= 0 && (p as usize) < d.canvas().len())
            .map(|p| {
                let cur = d.top_k_at(p, 1).map(|(_, c)| c);
                vec![p.into(), d.canvas()[p as usize].into(), cur.into()]
            })
            .collect();
        out.push(Value::Table(Table { title: "Watches".into(), columns: vec!["pos".into(), "id".into(), "p".into()], rows }));
    }
    if let Some(stop) = stop {
        out.push(msg(stop));
    }
    Ok(out)
}

pub(super) fn step(s: &mut Session, a: &Args) -> CmdResult {
    let n = a.int("N").unwrap_or(1);
    let (reports, stop) = s.advance(n as usize, false, a)?;
    after_steps(s, reports, stop)
}

pub(super) fn run(s: &mut Session, a: &Args) -> CmdResult {
    let (reports, stop) = s.advance(usize::MAX, false, a)?;
    let d = s.decoder()?;
    let summary = format!("{} steps; {} tokens, TPF {:.2}", reports.len(), d.decoded_tokens(), d.tpf());
    let text = s.ready()?.tokenizer.decode(&s.decoder()?.output());
    let mut out = after_steps(s, Vec::new(), stop)?;
    out.push(msg(summary));
    out.push(msg(format!("output: {text:?}")));
    Ok(out)
}

pub(super) fn cont(s: &mut Session, a: &Args) -> CmdResult {
    if s.breakpoints.is_empty() {
        return Err(CommandError::Failed("no breakpoints: add one with `break EVENT` (or use `run`)".into()));
    }
    let (reports, stop) = s.advance(usize::MAX, true, a)?;
    let last: Vec<_> = reports.last().cloned().into_iter().collect();
    let mut out = after_steps(s, last, stop)?;
    out.insert(0, msg(format!("{} steps", reports.len())));
    Ok(out)
}

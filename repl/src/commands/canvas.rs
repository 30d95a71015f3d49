//! Reading the current branch (`canvas`, `gamma`, `delta`, `topk`, `trace`, `block`, `stats`, `chart`) and editing it
//! by hand (`poke`, `remask`).

use dllm_engine::decode::{Denoiser, EditOps, WriteKind};

use super::{checked, msg, usage};
use super::stepping::{edit_ids, edit_op, steps_table};
use crate::parse::Args;
use crate::session::{CmdResult, CommandError, Session};
use crate::value::{Chart, Series, Table, Value};

pub(super) fn canvas(s: &mut Session, a: &Args) -> CmdResult {
    let mut v = s.canvas_value("canvas")?;
    if let Value::Canvas(c) = &mut v {
        c.fold = a.text("all").is_none();
    }
    Ok(vec![v])
}

fn last_report(s: &Session) -> Result<dllm_engine::decode::StepReport, CommandError> {
    let mut r = s.decoder()?.reports().last().cloned().ok_or_else(|| CommandError::Failed("no step yet: `step` runs one".into()))?;
    r.annotate(s.tokenizer()?);
    Ok(r)
}

/// A write's text in the gamma / delta tables: LLaDA2.2's edit operations by name.
fn op_name(kind: WriteKind, text: &str) -> String {
    match kind {
        WriteKind::Delete => "DELETE".into(),
        WriteKind::Split => "SPLIT".into(),
        WriteKind::Token => text.into(),
    }
}

pub(super) fn gamma(s: &mut Session, _: &Args) -> CmdResult {
    let r = last_report(s)?;
    let rows = r.gamma.iter().map(|u| vec![u.pos.into(), u.token.into(), op_name(u.kind, &u.text).into(), u.p.into()]).collect();
    Ok(vec![Value::Table(Table { title: format!("Gamma at step {} (mask → token)", r.step), columns: ["pos", "id", "text", "p"].map(String::from).to_vec(), rows })])
}

pub(super) fn delta(s: &mut Session, _: &Args) -> CmdResult {
    let r = last_report(s)?;
    let rows = r.delta.iter().map(|e| vec![e.pos.into(), e.old_text.clone().into(), op_name(e.kind, &e.new_text).into(), e.p.into()]).collect();
    Ok(vec![Value::Table(Table { title: format!("Delta at step {} (token → token)", r.step), columns: ["pos", "old", "new", "p"].map(String::from).to_vec(), rows })])
}

pub(super) fn topk(s: &mut Session, a: &Args) -> CmdResult {
    let (pos, k) = (checked(a, "POS"), a.int("K").unwrap_or(5));
    let d = s.decoder()?;
    let Some((top, cur)) = d.top_k_at(pos, k) else {
        let why = match d.last_forward_span() {
            Some(r) => format!("the last forward covered positions {} to {} only", r.start, r.end - 1),
            None => "there was no forward since this decode started or was rewound".to_string(),
        };
        let b = d.settings.block_length;
        let block = d.cursor().block;
        return Err(CommandError::Failed(format!(
            "no distribution at position {pos}: {why}. `step` runs a forward of the current block (block {block}, positions {} to {})",
            block * b,
            (block + 1) * b - 1
        )));
    };
    let current = d.canvas()[pos as usize];
    let l = s.ready()?;
    let tok = &l.tokenizer;
    let edit = l.model.edit_tokens();
    let name = |t: i64| edit_op(t, edit).map(String::from).unwrap_or_else(|| tok.token_text(t));
    let rows = top.iter().map(|(t, p)| vec![(*t).into(), name(*t).into(), (*p).into()]).collect();
    Ok(vec![
        Value::Table(Table { title: format!("Top {k} at position {pos}"), columns: ["id", "text", "p"].map(String::from).to_vec(), rows }),
        msg(format!("now at {pos}: {:?} with p {cur:.4}", tok.token_text(current))),
    ])
}

pub(super) fn trace(s: &mut Session, _: &Args) -> CmdResult {
    let tok = s.tokenizer()?;
    let reports: Vec<_> = s.decoder()?.reports().cloned().map(|mut r| { r.annotate(tok); r }).collect();
    Ok(vec![steps_table("Trace", &reports, edit_ids(s))])
}

pub(super) fn block(s: &mut Session, _: &Args) -> CmdResult {
    let d = s.decoder()?;
    let c = d.cursor();
    let b = d.settings.block_length;
    let masks = d.canvas()[(c.block * b) as usize..((c.block + 1) * b) as usize].iter().filter(|&&t| t == d.mask_id()).count();
    Ok(vec![msg(format!(
        "block {} of {} (positions {} to {}): {} masks, {} steps in this block, {} post steps, {} cached positions{}",
        c.block,
        d.num_blocks(),
        c.block * b,
        (c.block + 1) * b - 1,
        masks,
        c.block_step,
        c.post_steps,
        d.cached_len(),
        if c.finished { "; finished" } else { "" }
    ))])
}

pub(super) fn stats(s: &mut Session, _: &Args) -> CmdResult {
    let d = s.decoder()?;
    let st = d.stats();
    let mut data = serde_json::to_value(&st).unwrap_or_default();
    // The Levenshtein counters only mean something for a decode that can delete and insert: keep them out of
    // a LLaDA2.1 decode's stats unless they are non-zero.
    let lev = d.settings.edit_ops == EditOps::Levenshtein;
    if let Some(obj) = data.as_object_mut() {
        for (key, n) in [("deletions", st.deletions), ("insertions", st.insertions), ("truncated", st.truncated), ("antiloop", st.antiloop)] {
            if !lev && n == 0 {
                obj.remove(key);
            }
        }
    }
    Ok(vec![Value::Data { title: "stats".into(), data }])
}

pub(super) fn chart(s: &mut Session, _: &Args) -> CmdResult {
    let reports: Vec<_> = s.decoder()?.reports().cloned().collect();
    let series = |name: &str, f: &dyn Fn(&dllm_engine::decode::StepReport) -> f64| Series {
        name: name.into(),
        points: reports.iter().map(|r| (r.step as f64, f(r))).collect(),
    };
    Ok(vec![Value::Chart(Chart {
        title: "Decoding, step by step".into(),
        x_label: "step".into(),
        y_label: "positions".into(),
        series: vec![
            series("masks left in block", &|r| r.masks_left as f64),
            series("|Gamma| (unmasked)", &|r| r.gamma.len() as f64),
            series("|Delta| (edited)", &|r| r.delta.len() as f64),
        ],
    }), confidence_chart(&reports)])
}

/// Confidence by position and step: for each of the last 8 steps, p of every token it wrote, by position.
fn confidence_chart(reports: &[dllm_engine::decode::StepReport]) -> Value {
    let from = reports.len().saturating_sub(8);
    let series = reports[from..]
        .iter()
        .map(|r| {
            let mut points: Vec<(f64, f64)> =
                r.gamma.iter().map(|u| (u.pos as f64, u.p as f64)).chain(r.delta.iter().map(|e| (e.pos as f64, e.p as f64))).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { name: format!("step {}", r.step), points }
        })
        .collect();
    Value::Chart(Chart { title: "Confidence of each step's writes".into(), x_label: "position".into(), y_label: "p".into(), series })
}

pub(super) fn poke(s: &mut Session, a: &Args) -> CmdResult {
    let pos = checked(a, "POS");
    let spec = a.text("TOKEN").unwrap_or_default();
    let l = s.ready()?;
    let vocab = l.model.config().vocab_size;
    let id = match spec.strip_prefix('#') {
        Some(n) => n.parse::<i64>().map_err(|_| usage("poke", format!("#ID must be an integer, got {spec:?}")))?,
        None => {
            let ids = l.tokenizer.encode(spec)?;
            if ids.len() != 1 {
                return Err(CommandError::Failed(format!("{spec:?} is {} tokens, not one; use #ID", ids.len())));
            }
            if l.tokenizer.token_text(ids[0]) == "<|unk|>" && spec != "<|unk|>" {
                return Err(CommandError::Failed(format!("{spec:?} is not in the vocabulary; use #ID")));
            }
            ids[0]
        }
    };
    s.decoder_mut()?.set_tokens(&[(pos, id)], vocab)?;
    Ok(vec![msg(format!("position {pos} set to {id}")), s.canvas_value("canvas")?])
}

pub(super) fn remask(s: &mut Session, a: &Args) -> CmdResult {
    let pos = a.ints("POS");
    s.decoder_mut()?.remask(&pos)?;
    Ok(vec![msg(format!("re-masked {pos:?}")), s.canvas_value("canvas")?])
}

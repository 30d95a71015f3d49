//! `likelihood`: ELBO estimates of log p(response | prompt) for the current branch's decode or a given pair, one
//! row per estimator, with the edit estimator's parts (docs/rl.md). Its entry is in the command table.

use std::sync::atomic::Ordering;

use dllm_engine::decode::Decoder;
use dllm_engine::edit_likelihood::EditParts;
use dllm_engine::likelihood::{likelihood, Estimator, LikelihoodReport, MAX_COUNT};
use dllm_engine::{Role, Tokenizer};

use crate::grammar::{after_dashes, any, int, key, Kind, Syntax};
use crate::parse::Args;
use crate::research::usage;
use crate::session::{CmdResult, CommandError, Session};
use crate::value::{Cell, Table, Value};

/// `likelihood`'s arguments.
pub(crate) const SYNTAX: Syntax = Syntax::Params(&[
    any("ESTIMATOR", Kind::Estimator),
    key("seed", "S", int(0, i64::MAX)),
    key("repeat", "R", int(1, MAX_COUNT as i64)),
    after_dashes("PROMPT => RESPONSE"),
]);

/// `likelihood`: ELBO estimates of the current branch's decode or of a given pair, one row per estimator.
pub(crate) fn likelihood_cmd(s: &mut Session, a: &Args) -> CmdResult {
    let pair = a.text("PROMPT => RESPONSE");
    let (seed, repeat) = (a.int("S").unwrap_or(0) as u64, a.int("R").unwrap_or(1) as usize);
    let mut estimators = Vec::new();
    for w in a.texts("ESTIMATOR") {
        estimators.push(Estimator::parse(w)?);
    }
    if estimators.is_empty() {
        estimators.push(Estimator::default());
    }
    let l = s.ready()?;
    let (prompt, response, what, block) = match pair {
        Some(p) => {
            let (x, y) = p.split_once("=>").ok_or_else(|| usage("likelihood", "give the pair as `-- PROMPT => RESPONSE`"))?;
            let (x, y) = (x.trim(), y.trim());
            let (prompt, response) = pair_ids(&l.tokenizer, x, y)?;
            (prompt, response, format!("log p({y:?} | {x:?})"), s.settings.block_length)
        }
        None => {
            let d = s.decoder()?;
            let (prompt, response) = decoded_pair(d, &l.tokenizer)?;
            let text = l.tokenizer.decode(&response[..response.len() - usize::from(response.last() == Some(&l.tokenizer.eos_id))]);
            (prompt, response, format!("log p({text:?} | branch `{}`)", s.current), d.settings.block_length)
        }
    };
    let mut rows = Vec::new();
    let mut parts = Vec::new();
    let flag = s.interrupt_flag();
    for est in &estimators {
        let mut reports: Vec<LikelihoodReport> = Vec::with_capacity(repeat);
        for r in 0..repeat {
            if flag.load(Ordering::SeqCst) {
                return Err(CommandError::Interrupted);
            }
            let (m, t) = (l.tokenizer.mask_id, l.tokenizer.eos_id);
            reports.push(likelihood(&l.model, &prompt, &response, m, t, block, est, seed.wrapping_add(r as u64))?);
        }
        rows.push(likelihood_row(est, &reports));
        if let Some(t) = edit_parts_table(est, &reports) {
            parts.push(Value::Table(t));
        }
    }
    let mut columns = vec!["estimator", "value", "stderr", "per block", "samples", "forwards"];
    if repeat > 1 {
        columns = vec!["estimator", "mean value", "std over seeds", "mean stderr", "per block (mean)", "samples", "forwards"];
    }
    let mut out = vec![Value::Table(Table {
        title: format!("{what}: {} response tokens, block {block}{}", response.len(), if repeat > 1 { format!(", {repeat} seeds") } else { String::new() }),
        columns: columns.into_iter().map(String::from).collect(),
        rows,
    })];
    out.extend(parts);
    Ok(out)
}

/// The ids of a scored pair: the prompt through the chat template, the response with its EOS.
pub(crate) fn pair_ids(tok: &Tokenizer, prompt: &str, response: &str) -> Result<(Vec<i64>, Vec<i64>), CommandError> {
    let p = tok.encode(&tok.chat(&[(Role::Human, prompt)], true)?)?;
    let mut r = tok.encode(response)?;
    r.push(tok.eos_id);
    Ok((p, r))
}

/// The `edit` estimator's contributions by part (means over the seeds), or `None` for a masking estimator.
fn edit_parts_table(est: &Estimator, reports: &[LikelihoodReport]) -> Option<Table> {
    let parts: Vec<&EditParts> = reports.iter().filter_map(|r| r.edit.as_ref()).collect();
    if parts.len() != reports.len() || parts.is_empty() {
        return None;
    }
    let n = parts.len() as f64;
    let mut rows: Vec<Vec<Cell>> = (0..5)
        .map(|k| {
            let name = parts[0].named()[k].0;
            let sum = parts.iter().map(|p| p.named()[k].1.sum).sum::<f64>() / n;
            let count = parts.iter().map(|p| p.named()[k].1.count as f64).sum::<f64>() / n;
            vec![name.into(), sum.into(), count.into()]
        })
        .collect();
    let total = reports.iter().map(|r| r.value).sum::<f64>() / n;
    let slots = parts.iter().map(|p| p.named().iter().map(|(_, c)| c.count as f64).sum::<f64>()).sum::<f64>() / n;
    rows.push(vec!["total".into(), total.into(), slots.into()]);
    Some(Table {
        title: format!("{} by part: weighted sums (masked slots 1/(N t), visible slots 1/N) and scored slots{}", est.describe(), if reports.len() > 1 { ", means over the seeds" } else { "" }),
        columns: ["part", "sum", "slots"].map(String::from).to_vec(),
        rows,
    })
}

fn likelihood_row(est: &Estimator, reports: &[LikelihoodReport]) -> Vec<Cell> {
    let n = reports.len() as f64;
    let mean = reports.iter().map(|r| r.value).sum::<f64>() / n;
    let blocks = reports[0].per_block.len();
    let per_block: Vec<String> = (0..blocks).map(|b| format!("{:.3}", reports.iter().map(|r| r.per_block[b]).sum::<f64>() / n)).collect();
    let first = &reports[0];
    if reports.len() == 1 {
        return vec![est.describe().into(), mean.into(), first.stderr.into(), per_block.join(" ").into(), first.samples.into(), first.forwards.into()];
    }
    let std = (reports.iter().map(|r| (r.value - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let stderr = reports.iter().map(|r| r.stderr).sum::<f64>() / n;
    vec![est.describe().into(), mean.into(), std.into(), stderr.into(), per_block.join(" ").into(), first.samples.into(), first.forwards.into()]
}

/// The prompt and the decoded response (through its first EOS) of a finished region of `d`.
fn decoded_pair(d: &Decoder, tok: &Tokenizer) -> Result<(Vec<i64>, Vec<i64>), CommandError> {
    let p = d.prompt_len() as usize;
    let out = d.output();
    let end = out.iter().position(|&t| t == tok.eos_id).map_or(out.len(), |e| e + 1);
    let response = out[..end].to_vec();
    let masks = response.iter().filter(|&&t| t == d.mask_id()).count();
    if masks > 0 {
        return Err(CommandError::Failed(format!("the response still holds {masks} masks: finish the decode (`run`) first, or score a pair with `likelihood -- PROMPT => RESPONSE`")));
    }
    if response.is_empty() {
        return Err(CommandError::Failed("the branch has no decoded response yet: `run` first".into()));
    }
    Ok((d.canvas()[..p].to_vec(), response))
}


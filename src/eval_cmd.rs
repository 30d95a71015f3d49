//! `dllm eval`: a model on the held-out split of the task suite: accuracy, TPF, forwards (steps) and edits
//! per task, and the ceiling TPF a confident model would reach (see `dllm_engine::eval`). A table, or one
//! JSON object with `--json`.

use anyhow::{bail, Context, Result};
use clap::Args;
use dllm_engine::decode::DecodeSettings;
use dllm_engine::eval::{evaluate, EvalOptions, EvalReport, DEFAULT_BATCH};
use dllm_engine::tasks::{Task, BLOCK_LENGTH, GEN_LENGTH};

use crate::model_cmds::ModelArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated tasks (copy, reverse, sort, add, order), or `all`.
    #[arg(long, default_value = "all")]
    pub tasks: String,
    /// Decoding preset (Q, S, llada2.0, sglang, diffusers); eos_early_stop stays on unless --set turns it off.
    #[arg(long, default_value = "Q")]
    pub preset: String,
    /// Any setting, as NAME=VALUE (repeatable), e.g. --set edit_threshold=off --set threshold=0.9 --set mbe_window=1.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Held-out instances per task.
    #[arg(long, default_value_t = 250)]
    pub n: usize,
    /// Rows decoded together (with mbe_window > 0 every instance is decoded alone).
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    /// Print one JSON object (the report).
    #[arg(long)]
    pub json: bool,
}

/// The settings: the task suite's lengths, the preset, eos_early_stop on, then every --set in order.
fn settings(a: &EvalArgs) -> Result<DecodeSettings> {
    let mut s = DecodeSettings::official(GEN_LENGTH);
    s.block_length = BLOCK_LENGTH;
    s.apply_preset(&a.preset)?;
    s.eos_early_stop = true;
    for kv in &a.set {
        let Some((k, v)) = kv.split_once('=') else { bail!("--set {kv:?}: expected NAME=VALUE") };
        s.set(k.trim(), v.trim()).with_context(|| format!("--set {kv}"))?;
    }
    Ok(s)
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    let opts = EvalOptions { tasks: Task::parse_list(&a.tasks)?, n: a.n, settings: settings(a)?, batch: a.batch };
    opts.validate()?;
    let loaded = a.model.load()?;
    let mut report = evaluate(&loaded.model, &loaded.tokenizer, &opts)?;
    report.settings.preset = Some(a.preset.clone());
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table(&report));
        println!("model {}; {}; {:.1} s", loaded.dir.display(), settings_line(&report), report.seconds);
    }
    Ok(())
}

fn table(r: &EvalReport) -> String {
    let mut out = format!("{:<8} {:>5} {:>9} {:>6} {:>6} {:>6} {:>11}\n", "task", "n", "accuracy", "TPF", "steps", "edits", "ceiling TPF");
    let mut line = |name: &str, n: usize, acc: f64, tpf: f64, steps: f64, edits: f64, ceiling: f64| {
        out += &format!("{name:<8} {n:>5} {:>8.1}% {tpf:>6.2} {steps:>6.2} {edits:>6.2} {ceiling:>11.2}\n", acc * 100.0);
    };
    for t in &r.tasks {
        line(t.task.name(), t.n, t.accuracy, t.tpf, t.steps, t.edits, t.ceiling_tpf);
    }
    line("all", r.total, r.accuracy, r.tpf, r.steps, r.edits, r.ceiling_tpf);
    out
}

fn settings_line(r: &EvalReport) -> String {
    let s = &r.settings;
    let edit = s.edit_threshold.map_or("off".to_string(), |t| t.to_string());
    format!(
        "preset {}, threshold {}, edit threshold {edit}, gen_length {}, block_length {}, mbe_window {}, eos_early_stop {}",
        s.preset.as_deref().unwrap_or("-"),
        s.threshold,
        s.gen_length,
        s.block_length,
        s.mbe_window,
        s.eos_early_stop
    )
}

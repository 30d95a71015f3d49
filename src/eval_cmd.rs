//! `dllm eval`: a model on the held-out split of the task suite: accuracy, TPF, forwards (steps) and edits
//! per task, and the ceiling TPF a confident model would reach (see `dllm_engine::eval`). A table, or one
//! JSON object with `--json`.

use anyhow::{bail, Context, Result};
use clap::Args;
use dllm_engine::decode::DecodeSettings;
use dllm_engine::eval::{evaluate, EvalOptions, EvalReport, DEFAULT_BATCH};
use dllm_engine::tasks::{Task, BLOCK_LENGTH, GEN_LENGTH};
use dllm_engine::train::data::{DataOptions, Example};

use crate::model_cmds::ModelArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated tasks (copy, reverse, sort, add, order, dedup, expand, rle), `all`, `2.1` (the first
    /// five) or `edit` (the length tasks: dedup, expand, rle).
    #[arg(long, default_value = "all")]
    pub tasks: String,
    /// Decoding preset; eos_early_stop stays on unless --set turns it off.
    #[arg(long, default_value = "Q", value_parser = crate::decode_cmd::preset_values(), ignore_case = true)]
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
    /// Only the hard level: instances whose answer has at least 9 characters (`add` has none: left out of `all`).
    #[arg(long)]
    pub hard: bool,
    /// Route a block-routed (LLaDA2.2) model's experts per token instead, with the same weights (the block
    /// routing ablation): `block` (the checkpoint's own routing) or `token`.
    #[arg(long, default_value = "block")]
    pub routing: String,
    /// Print one JSON object (the report).
    #[arg(long)]
    pub json: bool,
    /// Instead of the task suite: exact-answer accuracy of greedy decodes on a JSONL file of `dllm train
    /// --data` (its held-out lines, split as training splits them with the same --held-out and --seed).
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// With --data: the held-out share (0 evaluates every line).
    #[arg(long, default_value_t = 0.1)]
    pub held_out: f64,
    /// With --data: the seed of the split.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `dllm eval --data FILE`: exact answers on the file's held-out lines (or all of them with --held-out 0).
fn eval_data(a: &EvalArgs, file: &std::path::Path) -> Result<()> {
    let loaded = a.model.load()?;
    let max_positions = loaded.model.config().max_position_embeddings as usize;
    let options = DataOptions { held_out: a.held_out, max_response: GEN_LENGTH as usize * 64, max_positions, block: BLOCK_LENGTH, seed: a.seed };
    let d = dllm_engine::train::data::load(file, &loaded.tokenizer, options)?;
    let pool = if a.held_out > 0.0 { &d.held_out } else { &d.train };
    let examples: Vec<&Example> = pool.iter().take(a.n).collect();
    let acc = dllm_engine::train::data::accuracy(&loaded.model, &loaded.tokenizer, &examples, BLOCK_LENGTH)?;
    let which = if a.held_out > 0.0 { "held-out" } else { "all" };
    if a.json {
        println!("{}", serde_json::json!({ "data": file, "split": which, "n": examples.len(), "accuracy": acc }));
    } else {
        println!("{}: {:.1}% exact answers on {} {which} examples", file.display(), 100.0 * acc, examples.len());
    }
    Ok(())
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
    if let Some(file) = &a.data {
        return eval_data(a, file);
    }
    let mut tasks = Task::parse_list(&a.tasks)?;
    if a.hard && a.tasks.trim() == "all" {
        tasks.retain(|&t| t != Task::Add); // no hard level
    }
    let opts = EvalOptions { tasks, n: a.n, settings: settings(a)?, batch: a.batch, hard: a.hard };
    opts.validate()?;
    let mut loaded = a.model.load()?;
    let pool = loaded.model.config().block_routing();
    match a.routing.as_str() {
        "block" => {}
        "token" => loaded.model.route_per_token().context("--routing token")?,
        other => bail!("--routing {other:?}: expected block or token"),
    }
    let mut report = evaluate(&loaded.model, &loaded.tokenizer, &opts)?;
    report.settings.preset = Some(a.preset.clone());
    let experts = experts_per_block(&loaded, &opts.tasks, a.n.min(64))?;
    // Per token: a 2.1 model, or a 2.2 model under --routing token.
    let mode = if a.routing == "token" || pool.is_none() { "token" } else { "block" };
    if a.json {
        let (mean, most): (Vec<f64>, Vec<usize>) = experts.into_iter().unzip();
        let routing = serde_json::json!({ "mode": mode, "experts_per_block": mean, "experts_per_block_max": most, "pool": pool.map(|p| p.0) });
        // The report's own field order first (a struct, not a map, keeps it), then the routing.
        #[derive(serde::Serialize)]
        struct WithRouting<'a> {
            #[serde(flatten)]
            report: &'a EvalReport,
            routing: serde_json::Value,
        }
        println!("{}", serde_json::to_string(&WithRouting { report: &report, routing })?);
    } else {
        print!("{}", table(&report));
        println!("model {}; {}; {:.1} s", loaded.dir.display(), settings_line(&report), report.seconds);
        if !experts.is_empty() {
            let c = loaded.model.config();
            let per: Vec<String> = experts.iter().map(|(mean, most)| format!("{mean:.2} (max {most})")).collect();
            let how = match pool {
                Some(p) => format!("routing per {mode}; pool {} of {}", p.0, c.num_experts),
                None => "routed per token: no expert pool".to_string(),
            };
            println!("distinct experts per {BLOCK_LENGTH}-token block, per MoE layer: {} ({how})", per.join(" "));
        }
    }
    Ok(())
}

/// Per MoE layer, the mean number of distinct experts the tokens of a block use, over the clean canvases
/// (prompt, answer, EOS) of the first `n` held-out instances of each task.
fn experts_per_block(l: &dllm_engine::Loaded, tasks: &[Task], n: usize) -> Result<Vec<(f64, usize)>> {
    if l.model.config().num_experts == 0 || n == 0 {
        return Ok(vec![]);
    }
    let mut out: Vec<(f64, usize, usize)> = Vec::new();
    for &task in tasks {
        for ex in dllm_engine::tasks::instances(task, dllm_engine::tasks::HELD_OUT_SEED, n) {
            let (ids, _) = dllm_engine::train::canvas(&l.tokenizer, &ex, &ex.answers[0], BLOCK_LENGTH)?;
            let t = tch::Tensor::from_slice(&ids).view([1, -1]).to_device(l.model.device());
            let per_layer = l.model.experts_per_group(&t, BLOCK_LENGTH)?;
            out.resize(per_layer.len(), (0.0, 0, 0));
            for (o, (mean, most)) in out.iter_mut().zip(per_layer) {
                *o = (o.0 + mean, o.1 + 1, o.2.max(most));
            }
        }
    }
    Ok(out.into_iter().map(|(s, c, most)| (s / c.max(1) as f64, most)).collect())
}

fn table(r: &EvalReport) -> String {
    let lev = r.deletions > 0.0 || r.insertions > 0.0;
    let mut out = format!("{:<8} {:>5} {:>9} {:>6} {:>6} {:>6}", "task", "n", "accuracy", "TPF", "steps", "edits");
    if lev {
        out += &format!(" {:>6} {:>6}", "del", "ins");
    }
    out += &format!(" {:>11}\n", "ceiling TPF");
    let mut line = |name: &str, n: usize, acc: f64, tpf: f64, steps: f64, edits: f64, di: (f64, f64), ceiling: f64| {
        out += &format!("{name:<8} {n:>5} {:>8.1}% {tpf:>6.2} {steps:>6.2} {edits:>6.2}", acc * 100.0);
        if lev {
            out += &format!(" {:>6.2} {:>6.2}", di.0, di.1);
        }
        out += &format!(" {ceiling:>11.2}\n");
    };
    for t in &r.tasks {
        line(t.task.name(), t.n, t.accuracy, t.tpf, t.steps, t.edits, (t.deletions, t.insertions), t.ceiling_tpf);
    }
    line("all", r.total, r.accuracy, r.tpf, r.steps, r.edits, (r.deletions, r.insertions), r.ceiling_tpf);
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

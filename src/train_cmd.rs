//! `dllm train`: trains a model on the task suite with a named recipe, or fine-tunes a checkpoint on a JSONL
//! file (`--data`; see `dllm_engine::train`), with a progress bar (loss per stream, tokens per second),
//! resumable checkpoints under `OUT/train`, and the model itself in `OUT` (config.json, model.safetensors,
//! tokenizer.json; a LoRA run's adapters alone in `OUT/lora`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use dllm_engine::rl::Trainable;
use dllm_engine::train::data::{digest, DataOptions};
use dllm_engine::train::{self, DataConfig, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct TrainArgs {
    /// tiny (builtin:tiny), m2t (its M2T-only control), tiny-2.2 (builtin:tiny-2.2, LLaDA2.2), smoke or smoke-2.2
    /// (quick test runs); finetune with --data [default: tiny, or finetune with --data].
    #[arg(long, alias = "preset")]
    recipe: Option<String>,
    /// Fine-tune on this JSONL file: one {"messages": [{"role", "content"}, ...]} or {"prompt", "response"}
    /// object per line; only assistant turns are supervised.
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --data: the checkpoint folder or builtin:NAME to start from.
    #[arg(long, default_value = "builtin:tiny")]
    model: String,
    /// With --data: what trains: all, lora:R[:ALPHA] (adapters, saved alone in OUT/lora as well) or layers:A-B.
    #[arg(long, default_value = "all")]
    trainable: String,
    /// With --data: share of the lines held out for evaluation.
    #[arg(long, default_value_t = 0.1)]
    held_out: f64,
    /// With --data: the most answer tokens (EOS included) an example may have.
    #[arg(long, default_value_t = 64)]
    max_response: usize,
    /// Override the recipe's learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Override the recipe's batch (sequences per step).
    #[arg(long)]
    batch: Option<usize>,
    /// Output folder: the model, and resumable checkpoints in OUT/train.
    #[arg(long)]
    out: PathBuf,
    /// Override the recipe's number of steps.
    #[arg(long)]
    steps: Option<i64>,
    /// Override the recipe's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override how often (in steps) a resumable checkpoint is written to OUT/train.
    #[arg(long)]
    checkpoint_every: Option<i64>,
    /// Start over even if OUT/train holds a checkpoint (default: resume from it).
    #[arg(long)]
    fresh: bool,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    threads: Option<i32>,
    /// Print one JSON line of metrics per step instead of the progress bar.
    #[arg(long)]
    json: bool,
}

pub fn train(a: &TrainArgs) -> Result<()> {
    let recipe = a.recipe.clone().unwrap_or_else(|| if a.data.is_some() { "finetune" } else { "tiny" }.to_string());
    let mut cfg = TrainConfig::recipe(&recipe)?;
    if let Some(s) = a.steps {
        if s <= 0 {
            bail!("--steps must be positive, got {s}");
        }
        cfg.steps = s;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(n) = a.checkpoint_every {
        if n <= 0 {
            bail!("--checkpoint-every must be positive, got {n}");
        }
        cfg.checkpoint_every = n;
    }
    if let Some(lr) = a.lr {
        if !(lr.is_finite() && lr > 0.0 && lr <= 1.0) {
            bail!("--lr must be in (0, 1], got {lr}");
        }
        cfg.lr = lr;
    }
    if let Some(b) = a.batch {
        if !(1..=4096).contains(&b) {
            bail!("--batch must be from 1 to 4096, got {b}");
        }
        cfg.batch = b;
    }
    match &a.data {
        Some(file) => cfg.data = Some(data_config(file, &a.model, &a.trainable, a.held_out, a.max_response, &cfg)?),
        None if recipe == "finetune" => bail!("--recipe finetune trains on --data FILE.jsonl"),
        None => {
            if a.trainable != "all" || a.model != "builtin:tiny" {
                bail!("--model and --trainable go with --data (the task-suite recipes train a new model whole)");
            }
        }
    }
    if let Some(t) = a.threads {
        if t <= 0 {
            bail!("--threads must be positive, got {t}");
        }
        tch::set_num_threads(t);
    }
    if let Some(dir) = train::latest_checkpoint(&a.out)?.filter(|_| !a.fresh) {
        eprintln!("resuming from {}", dir.display());
    }
    let mut trainer = train::prepare(cfg.clone(), &a.out, a.fresh)?;
    let before = report_data(&trainer, "before")?;
    let bar = if a.json { ProgressBar::hidden() } else { ProgressBar::new(cfg.steps as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").expect("template"),
    );
    let started = Instant::now();
    let (mut tokens, mut smooth) = (0i64, None::<(f64, f64)>);
    let history = train::run_trainer(&mut trainer, &a.out, |_, m| {
        tokens += m.tokens;
        let (sm, st) = smooth.map_or((m.m2t_loss, m.t2t_loss), |(sm, st)| (0.95 * sm + 0.05 * m.m2t_loss, 0.95 * st + 0.05 * m.t2t_loss));
        smooth = Some((sm, st));
        if a.json {
            println!("{}", serde_json::to_string(m).expect("json"));
        } else {
            bar.set_position(m.step as u64);
            let tps = tokens as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!("m2t {sm:.3} t2t {st:.3} | {tps:.0} tok/s{}", if m.mtf { " | mtf" } else { "" }));
            if let Some((hm, ht)) = m.held_out {
                bar.suspend(|| eprintln!("step {}: held-out m2t {hm:.3} t2t {ht:.3}", m.step));
            }
        }
        true
    })?;
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    let skipped = history.iter().filter(|m| m.skipped).count();
    eprintln!(
        "trained {} steps of recipe {} in {:.1} s ({:.0} tokens/s){}; model in {}",
        history.len(),
        cfg.recipe,
        secs,
        tokens as f64 / secs.max(1e-9),
        if skipped > 0 { format!(", {skipped} steps skipped (loss not finite)") } else { String::new() },
        a.out.display()
    );
    if before.is_some() {
        report_data(&trainer, "after")?;
    }
    Ok(())
}

/// The data part of a fine-tuning run's configuration (`--data` and its options), checked.
pub(crate) fn data_config(file: &Path, model: &str, trainable: &str, held_out: f64, max_response: usize, cfg: &TrainConfig) -> Result<DataConfig> {
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("--data {}: {e}", file.display()))?;
    if !(0.0..1.0).contains(&held_out) {
        bail!("--held-out must be at least 0 and below 1, got {held_out}");
    }
    if !(1..=1 << 20).contains(&max_response) {
        bail!("--max-response must be from 1 to {}, got {max_response}", 1 << 20);
    }
    Trainable::parse(trainable)?;
    let options = DataOptions { held_out, max_response, max_positions: 0, block: cfg.block, seed: cfg.seed };
    Ok(DataConfig { file: file.to_path_buf(), digest: digest(&bytes), base: model.to_string(), trainable: trainable.to_string(), options })
}

/// For a fine-tuning run that starts or ends: the data, what trains, and the held-out loss and accuracy
/// (on stderr). `None` for a task-suite run, or one resumed mid-way (its "before" is not the base).
fn report_data(t: &train::Trainer, when: &str) -> Result<Option<()>> {
    let (Some(d), Some(cfg)) = (&t.data, &t.cfg.data) else { return Ok(None) };
    if when == "before" && t.step > 0 {
        return Ok(None);
    }
    if when == "before" {
        let params = t.trainable_parameters();
        eprintln!(
            "data {}: {} examples for training, {} held out; base {}, trainable {} ({params} parameters)",
            d.file.display(),
            d.train.len(),
            d.held_out.len(),
            cfg.base,
            cfg.trainable
        );
    }
    let loss = t.held_out_loss()?.map_or("-".into(), |(m, v)| format!("m2t {m:.3} t2t {v:.3}"));
    let acc = t.held_out_accuracy(200)?.map_or("-".into(), |(a, n)| format!("{:.1}% of {n}", 100.0 * a));
    eprintln!("{when}: held-out loss {loss}, exact answers {acc}");
    Ok(Some(()))
}

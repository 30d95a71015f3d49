//! `dllm train`: trains a model on the task suite with a named preset (see `dllm_engine::train`), with a
//! progress bar (loss per stream, tokens per second), resumable checkpoints under `OUT/train`, and the
//! model itself in `OUT` (config.json, model.safetensors, tokenizer.json).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use dllm_engine::train::{self, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct TrainArgs {
    /// tiny (builtin:tiny), m2t (its M2T-only control), tiny-2.2 (builtin:tiny-2.2, LLaDA2.2), smoke or smoke-2.2
    /// (quick test runs).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Output folder: the model, and resumable checkpoints in OUT/train.
    #[arg(long)]
    out: PathBuf,
    /// Override the preset's number of steps.
    #[arg(long)]
    steps: Option<i64>,
    /// Override the preset's seed.
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
    let mut cfg = TrainConfig::preset(&a.preset)?;
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
    if let Some(t) = a.threads {
        if t <= 0 {
            bail!("--threads must be positive, got {t}");
        }
        tch::set_num_threads(t);
    }
    if let Some(dir) = train::latest_checkpoint(&a.out)?.filter(|_| !a.fresh) {
        eprintln!("resuming from {}", dir.display());
    }
    let bar = if a.json { ProgressBar::hidden() } else { ProgressBar::new(cfg.steps as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").expect("template"),
    );
    let started = Instant::now();
    let (mut tokens, mut smooth) = (0i64, None::<(f64, f64)>);
    let history = train::run(cfg.clone(), &a.out, a.fresh, |_, m| {
        tokens += m.tokens;
        let (sm, st) = smooth.map_or((m.m2t_loss, m.t2t_loss), |(sm, st)| (0.95 * sm + 0.05 * m.m2t_loss, 0.95 * st + 0.05 * m.t2t_loss));
        smooth = Some((sm, st));
        if a.json {
            println!("{}", serde_json::to_string(m).expect("json"));
        } else {
            bar.set_position(m.step as u64);
            let tps = tokens as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!("m2t {sm:.3} t2t {st:.3} | {tps:.0} tok/s{}", if m.mtf { " | mtf" } else { "" }));
        }
        true
    })?;
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    let skipped = history.iter().filter(|m| m.skipped).count();
    eprintln!(
        "trained {} steps of preset {} in {:.1} s ({:.0} tokens/s){}; model in {}",
        history.len(),
        cfg.preset,
        secs,
        tokens as f64 / secs.max(1e-9),
        if skipped > 0 { format!(", {skipped} steps skipped (loss not finite)") } else { String::new() },
        a.out.display()
    );
    Ok(())
}

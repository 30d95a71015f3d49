//! `dllm bench train`: training throughput of a recipe, or of fine-tuning a checkpoint on a JSONL file
//! (`--data`, `--trainable`): steps and canvas tokens per second, the time split of a step (batch, forwards,
//! backward, update) and the peak host memory of the run (model, training state, steps), without checkpoint
//! writes.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use dllm_engine::train::{TrainConfig, Trainer};
use serde_json::json;

#[derive(Args)]
pub struct TrainBench {
    /// Training recipe (tiny, m2t, smoke, ...: `dllm train --help`).
    #[arg(long, alias = "preset", default_value = "tiny")]
    recipe: String,
    /// Timed steps (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Multi-turn forward on every step (as in the last 80% of a tiny run); off: as in the first 20%.
    #[arg(long)]
    mtf: bool,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    threads: Option<i32>,
    /// Fine-tuning instead (recipe finetune): steps on this JSONL file, and the run's peak host memory.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// With --data: the checkpoint folder or builtin:NAME to fine-tune.
    #[arg(long, default_value = "builtin:tiny")]
    model: String,
    /// With --data: all, lora:R[:ALPHA] or layers:A-B.
    #[arg(long, default_value = "all")]
    trainable: String,
    #[arg(long)]
    json: bool,
}

pub fn train(a: &TrainBench) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let mut cfg = TrainConfig::recipe(if a.data.is_some() { "finetune" } else { &a.recipe })?;
    cfg.steps = 1_000_000;
    cfg.mtf = a.mtf && cfg.mtf;
    cfg.mtf_from = 0.0;
    if let Some(file) = &a.data {
        cfg.data = Some(crate::train_cmd::data_config(file, &a.model, &a.trainable, 0.1, 64, &cfg)?);
    }
    // The peak from here on: the model, its training state and the steps (not the binary and libtorch).
    std::fs::write("/proc/self/clear_refs", "5")?;
    let rss_before = crate::bench::proc_status_kib("VmRSS")? * 1024;
    let mut t = Trainer::new(cfg)?;
    for _ in 0..3 {
        t.train_step()?;
    }
    let (mut tokens, mut split) = (0i64, [0.0f64; 4]);
    let start = Instant::now();
    for _ in 0..a.steps {
        let m = t.train_step()?;
        tokens += m.tokens;
        for (s, x) in split.iter_mut().zip(m.split) {
            *s += x / a.steps as f64;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let peak = (crate::bench::proc_status_kib("VmHWM")? * 1024).saturating_sub(rss_before);
    let out = json!({
        "recipe": t.cfg.recipe,
        "trainable": t.cfg.data.as_ref().map_or("all", |d| d.trainable.as_str()),
        "trainable_parameters": t.trainable_parameters(),
        "weight_mb": t.model.weight_bytes() as f64 / 1e6,
        "peak_mb": peak as f64 / 1e6,
        "mtf": t.cfg.mtf,
        "threads": tch::get_num_threads(),
        "parameters": t.model.num_parameters(),
        "steps_per_second": a.steps as f64 / secs,
        "tokens_per_second": tokens as f64 / secs,
        "ms_batch": split[0] * 1e3,
        "ms_forward": split[1] * 1e3,
        "ms_backward": split[2] * 1e3,
        "ms_update": split[3] * 1e3,
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "{} ({} parameters, {} trained, {} threads, mtf {}): {:.2} steps/s, {:.0} canvas tokens/s; per step {:.1} ms batch, {:.1} ms forward, {:.1} ms backward, {:.1} ms update; peak {:.0} MB over {:.0} MB of weights",
            t.cfg.recipe, out["parameters"], out["trainable_parameters"], out["threads"], t.cfg.mtf, out["steps_per_second"].as_f64().unwrap_or(0.0),
            out["tokens_per_second"].as_f64().unwrap_or(0.0), split[0] * 1e3, split[1] * 1e3, split[2] * 1e3, split[3] * 1e3,
            peak as f64 / 1e6, t.model.weight_bytes() as f64 / 1e6
        );
    }
    Ok(())
}

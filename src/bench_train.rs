//! `dllm bench train`: training throughput of a preset (steps and canvas tokens per second) and the time split
//! of a step (batch, forwards, backward, update), without checkpoint writes.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use dllm_engine::train::{TrainConfig, Trainer};
use serde_json::json;

#[derive(Args)]
pub struct TrainBench {
    /// Training preset (tiny, m2t, smoke).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Timed steps (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Multi-turn forward on every step (as in the last 80% of a tiny run); off: as in the first 20%.
    #[arg(long)]
    mtf: bool,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    threads: Option<i32>,
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
    let mut cfg = TrainConfig::preset(&a.preset)?;
    cfg.steps = 1_000_000;
    cfg.mtf = a.mtf && cfg.mtf;
    cfg.mtf_from = 0.0;
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
    let out = json!({
        "preset": a.preset,
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
            "{} ({} parameters, {} threads, mtf {}): {:.2} steps/s, {:.0} canvas tokens/s; per step {:.1} ms batch, {:.1} ms forward, {:.1} ms backward, {:.1} ms update",
            a.preset, out["parameters"], out["threads"], t.cfg.mtf, out["steps_per_second"].as_f64().unwrap_or(0.0),
            out["tokens_per_second"].as_f64().unwrap_or(0.0), split[0] * 1e3, split[1] * 1e3, split[2] * 1e3, split[3] * 1e3
        );
    }
    Ok(())
}

//! `dllm bench likelihood`: the vectorised ELBO (every block term of every noise level from one composite
//! forward, or one forward per level) against the per-block loop (one plain forward per level and block), on a
//! random model of a named shape, with the same noise.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use dllm_engine::likelihood::{self, Estimator};
use dllm_engine::{shapes, DType};
use serde_json::json;
use tch::Device;

#[derive(Args)]
pub struct LikelihoodBench {
    /// Model shape (random weights).
    #[arg(long, alias = "preset", default_value = "tiny")]
    shape: String,
    /// Response blocks B.
    #[arg(long, default_value_t = 8)]
    blocks: usize,
    #[arg(long, default_value_t = 8)]
    block: i64,
    /// Noise levels N (stratified).
    #[arg(long, default_value_t = 4)]
    levels: usize,
    /// Timed repetitions (best of), after one warm-up.
    #[arg(long, default_value_t = 7)]
    iters: usize,
    #[arg(long)]
    json: bool,
}

fn best(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

pub fn likelihood(a: &LikelihoodBench) -> Result<()> {
    if a.blocks == 0 || a.levels == 0 || a.iters == 0 || a.block <= 0 {
        bail!("--blocks, --block, --levels and --iters must be positive");
    }
    let config = shapes::shape(&a.shape)?;
    let model = shapes::random_model(&config, 0, Device::Cpu, DType::F32)?;
    let (mask_id, eos_id) = (1, 0);
    let vocab = config.vocab_size;
    let prompt: Vec<i64> = (0..a.block).map(|i| 8 + i % (vocab - 8)).collect();
    let n = a.blocks * a.block as usize;
    let response: Vec<i64> = (0..n as i64).map(|i| 8 + (i * 7) % (vocab - 8)).collect();
    let plan = likelihood::plan(&Estimator::Stratified { levels: a.levels, antithetic: false }, prompt.len(), n, 0)?;
    let block = a.block;
    let batched = best(a.iters, || {
        let _ = tch::no_grad(|| likelihood::block_terms(&model, &prompt, &response, mask_id, eos_id, block, &plan.masks))?;
        Ok(())
    })?;
    let per_level = best(a.iters, || {
        for m in &plan.masks {
            let _ = tch::no_grad(|| likelihood::block_terms(&model, &prompt, &response, mask_id, eos_id, block, std::slice::from_ref(m)))?;
        }
        Ok(())
    })?;
    let looped = best(a.iters, || {
        let _ = tch::no_grad(|| likelihood::block_terms_loop(&model, &prompt, &response, mask_id, eos_id, block, &plan.masks))?;
        Ok(())
    })?;
    let out = json!({
        "shape": a.shape, "blocks": a.blocks, "block": a.block, "levels": a.levels, "threads": tch::get_num_threads(),
        "vectorised_batched_ms": batched * 1e3, "vectorised_per_level_ms": per_level * 1e3, "loop_ms": looped * 1e3,
        "speedup_batched": looped / batched, "speedup_per_level": looped / per_level,
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "{} B={} N={} ({} threads): vectorised {:.1} ms (levels batched) / {:.1} ms (one forward per level), per-block loop {:.1} ms: {:.1}x / {:.1}x",
            a.shape, a.blocks, a.levels, out["threads"], batched * 1e3, per_level * 1e3, looped * 1e3, looped / batched, looped / per_level
        );
    }
    Ok(())
}
